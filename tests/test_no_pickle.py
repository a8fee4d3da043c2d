"""The package never loads a pickle: no torch.load, pickle.load(s), np.load(allow_pickle=True), torch.jit.load…

Loading a pickle runs whatever code the file says; exitnet reads only safetensors and JSON. The scan reads every
module under ``src/exitnet`` with ``ast`` (so comments and strings do not count, and ``import pickle as p`` /
``from torch import load`` aliases are followed) and lists every offending call with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "exitnet"

#: Calls that unpickle (or run arbitrary serialised code), by their fully resolved dotted name.
FORBIDDEN = {
    "torch.load",
    "torch.serialization.load",
    "torch.jit.load",
    "torch.package.PackageImporter",
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "_pickle.load",
    "_pickle.loads",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "shelve.open",
    "marshal.load",
    "marshal.loads",
    "pandas.read_pickle",
}
#: Calls that unpickle only when asked to: ``allow_pickle=True`` (numpy's default is False).
PICKLE_OPTION = {"numpy.load", "numpy.lib.npyio.load"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> fully qualified name, from the module's imports (``import numpy as np`` -> np: numpy)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def offenders(source: str, filename: str = "<src>") -> list[str]:
    """Every pickle-loading call in ``source``, as ``file:line: name``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        if full in FORBIDDEN:
            found.append(f"{filename}:{node.lineno}: {full}")
        elif full in PICKLE_OPTION:
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{filename}:{node.lineno}: {full}(allow_pickle=...)")
    return found


def test_package_loads_no_pickle() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10, f"found only {len(files)} modules under {SRC}"
    bad = [o for f in files for o in offenders(f.read_text(), str(f.relative_to(SRC.parent)))]
    assert not bad, "pickle loading in the package (use safetensors / JSON):\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source",
    [
        "import torch\ntorch.load('x.pt')",
        "import torch\nm = torch.load('x.pt', weights_only=True)",
        "import torch as T\nT.jit.load('m.pt')",
        "from torch import load\nload('x')",
        "from torch import load as fetch\nfetch('x')",
        "import pickle\npickle.loads(b'')",
        "import pickle as pk\npk.load(open('f', 'rb'))",
        "from pickle import Unpickler\nUnpickler(f).load()",
        "import numpy as np\nnp.load('a.npy', allow_pickle=True)",
        "import numpy\nflag = True\nnumpy.load('a.npy', allow_pickle=flag)",
        "import joblib\njoblib.load('m.joblib')",
        "import torch.serialization\ntorch.serialization.load('x')",
    ],
)
def test_scanner_finds_offenders(source: str) -> None:
    assert len(offenders(source)) == 1


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np\nnp.load('a.npy')",
        "import numpy as np\nnp.load('a.npy', allow_pickle=False)",
        "from safetensors.torch import load_file\nload_file('m.safetensors')",
        "import json\njson.loads('{}')",
        "# torch.load('x') in a comment\ns = 'pickle.load'",
        "def load(x): ...\nload(1)",
    ],
)
def test_scanner_lets_safe_code_through(source: str) -> None:
    assert offenders(source) == []
