"""Rule files in: which files a rule path names, each read once, parsed, and the digest.

Each file is read once and its bytes are both what is parsed and what the rule set's
digest is computed from, so the digest a finding or `rules check` shows always describes
the rules that were compiled (a file rewritten while the agent loads cannot make them
disagree).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.engine import yamlsrc
from agent.engine.parsecache import CACHE, sha256
from agent.engine.problems import Problems, suggest, type_name

BUNDLED = "bundled"
TOP_KEYS = ("lists", "macros", "rules", "overrides")

# A reload compiles while the agent runs; the shipped rules are ~15 KB a file.
MAX_RULE_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class RuleFile:
    """One rule file as parsed: its path, its top-level mapping and the bytes it came from."""

    path: Path
    data: yamlsrc.Node
    raw: bytes  # what was parsed: the rule set's digest is of these bytes

    @property
    def file(self) -> str:
        """The path as problems name it."""
        return str(self.path)


def bundled_rules_dir() -> str:
    """The rules shipped inside the package (the repository's rules/)."""
    from importlib.resources import files

    return str(files("agent.rules"))


def rule_files(paths: Iterable[str]) -> list[Path]:
    """The YAML files named by `paths`, directories expanded (sorted, *.yaml and *.yml).

    The entry `bundled` names the rules shipped in the package, so a config can say
    `rules: [bundled, /etc/nodewarden/rules.d]` to add its own rules to them."""
    out: list[Path] = []
    for p in paths:
        path = Path(bundled_rules_dir() if p == BUNDLED else p)
        if path.is_dir():
            out.extend(sorted(q for q in path.iterdir()
                              if q.suffix in (".yaml", ".yml") and q.is_file()))
        else:
            out.append(path)
    return out


def _read(path: Path, problems: Problems) -> bytes | None:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_RULE_FILE_BYTES + 1)
    except OSError as e:
        problems.add(1, f"cannot read rule file: {e}")
        return None
    if len(raw) > MAX_RULE_FILE_BYTES:
        problems.add(1, f"the file is larger than {MAX_RULE_FILE_BYTES} bytes, the limit "
                        f"for a rule file; split it, or shorten its lists")
        return None
    return raw


def read_bytes(path: Path, problems: Problems) -> bytes | None:
    """The bytes of one rule file, or None (with the problem recorded)."""
    problems.file = str(path)
    return _read(path, problems)


def read_rule_file(path: Path, problems: Problems, raw: bytes | None = None
                   ) -> RuleFile | None:
    """Read (unless its bytes are given) and parse one rule file, or None (with the problem
    recorded) when it cannot be read or is not a YAML mapping. Unknown top-level keys are
    reported but do not stop it."""
    problems.file = str(path)
    if raw is None:
        raw = _read(path, problems)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        problems.add(1, f"cannot read rule file: {e}")
        return None
    parsed = CACHE.get(raw)
    if parsed is None:
        try:
            parsed = yamlsrc.load(text)
        except yamlsrc.YamlSyntaxError as e:
            problems.add(e.line, f"YAML syntax error: {e}; check indentation and quoting here")
            return None
        CACHE.put(raw, parsed)
    data, dups = parsed
    for line, key in dups:
        problems.add(line, f"duplicate key '{key}': YAML keeps only the last; remove one")
    if data is None:
        return RuleFile(path, yamlsrc.Node(), raw)
    if not isinstance(data, yamlsrc.Node):
        problems.add(1, f"a rule file must be a mapping with keys {', '.join(TOP_KEYS)}, "
                        f"not {type_name(data)}")
        return None
    for key in data:
        if key not in TOP_KEYS:
            problems.add(data.line_of(key), f"unknown top-level key '{key}'"
                                            f"{suggest(str(key), TOP_KEYS)}; expected one of "
                                            f"{', '.join(TOP_KEYS)}")
    return RuleFile(path, data, raw)


def digest(files: Sequence[RuleFile]) -> str:
    """16 hex digits of SHA-256 over each file's name and the very bytes that were parsed."""
    return digest_of([(f.path, f.raw) for f in files])


def digest_of(files: Iterable[tuple[Path, bytes]]) -> str:
    """`digest` of (path, bytes) pairs."""
    h = sha256()
    for path, raw in files:
        h.update(path.name.encode() + b"\0" + raw + b"\0")
    return h.hexdigest()[:16]
