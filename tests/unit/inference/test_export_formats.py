"""The export-format registry: names for --format, clear errors, dispatch by name, no torch to list them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssfilter.inference import formats
from ssfilter.inference.export import export_run

SRC = Path(__file__).resolve().parents[3] / "src"


def test_builtin_formats_and_unknown_name() -> None:
    assert formats.export_format_names() == ["onnx", "openvino"]
    assert formats.get_export_format("OpenVINO").suffix == ".xml"
    assert formats.get_export_format("onnx").extra == "onnx"
    with pytest.raises(formats.UnknownExportFormatError, match="only 'onnx' and 'openvino' are available"):
        formats.get_export_format("tflite")
    with pytest.raises(ValueError):  # also a ValueError, as before the registry
        formats.get_export_format("")


def test_a_registered_format_is_dispatched_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_exporter(source, path, **options):  # noqa: ANN001, ANN202, ANN003
        calls.append((source, Path(path), options))
        return Path(path)

    module = type(sys)("fake_export_module")
    module.export_fake = fake_exporter
    monkeypatch.setitem(sys.modules, "fake_export_module", module)
    monkeypatch.setattr(formats, "_FORMATS", dict(formats._FORMATS))
    formats.register_export_format(
        formats.ExportFormat("fake", ".fk", "Fake", "fake", "fake_export_module:export_fake", "a test")
    )
    assert formats.export_format_names() == ["fake", "onnx", "openvino"]
    assert export_run("run", tmp_path / "m.fk", "fake", opset=3) == tmp_path / "m.fk"
    assert calls == [("run", tmp_path / "m.fk", {"opset": 3})]
    with pytest.raises(formats.UnknownExportFormatError, match="only 'fake', 'onnx' and 'openvino'"):
        export_run("run", tmp_path / "m.x", "x")


def test_listing_formats_needs_no_torch() -> None:
    script = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from ssfilter.cli.parser import build_parser\n"
        "from ssfilter.inference.formats import export_format_names\n"
        "build_parser()\n"
        "print(json.dumps(export_format_names()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["onnx", "openvino"]
