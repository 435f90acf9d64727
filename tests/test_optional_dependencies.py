"""clean-fid and lmdb are optional at import time: no stylenat module imports them, and without them the
package still samples, while the features that need them fail with one line naming the package to install."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import natten_ops, stylenat
failures = {}
for package in (natten_ops, stylenat):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(module.name)
        except Exception as err:
            failures[module.name] = repr(err)
loaded = sorted(name for name in ("cleanfid", "lmdb") if name in sys.modules)
print(json.dumps({"failures": failures, "loaded": loaded}))
"""

BLOCK = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):  # as if clean-fid and lmdb were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("cleanfid", "lmdb"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
"""

WITHOUT_THEM = BLOCK + """
import json, sys
from pathlib import Path
import torch
from stylenat.cli import main
from stylenat.data import open_dataset
from stylenat.metrics import build_extractor
from stylenat.models import create_generator, save_generator

out = Path(sys.argv[1])
torch.manual_seed(0)
save_generator(create_generator("demo"), out / "G.safetensors", "demo", {})
code = main(["generate", "--ckpt", str(out / "G.safetensors"), "--seeds", "0-1", "--outdir", str(out / "images"),
             "--device", "cpu"])
messages = {}
(out / "lsun_lmdb").mkdir()
(out / "lsun_lmdb" / "data.mdb").write_bytes(b"")
for feature, call in (("lmdb", lambda: open_dataset(out / "lsun_lmdb", 32)),
                      ("inception", lambda: build_extractor("inception"))):
    try:
        call()
        messages[feature] = "no error"
    except ModuleNotFoundError as err:
        messages[feature] = str(err)
print(json.dumps({"generate": code, "images": sorted(p.name for p in (out / "images").glob("*.png")),
                  "messages": messages}))
"""


def run_python(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_module_imports_clean_fid_or_lmdb():
    seen = run_python(IMPORT_EVERYTHING)
    assert seen["failures"] == {}
    assert seen["loaded"] == []


def test_without_clean_fid_and_lmdb_everything_imports_and_samples(tmp_path):
    assert run_python(BLOCK + IMPORT_EVERYTHING)["failures"] == {}
    seen = run_python(WITHOUT_THEM, str(tmp_path))
    assert seen["generate"] == 0 and seen["images"] == ["seed0000.png", "seed0001.png"]
    lmdb, inception = seen["messages"]["lmdb"], seen["messages"]["inception"]
    assert "reading an LSUN LMDB dataset needs the 'lmdb' package" in lmdb and "pip install lmdb" in lmdb
    assert "needs the 'clean-fid' package" in inception and "pip install clean-fid" in inception
