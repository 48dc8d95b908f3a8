"""The model ``cdca device bench`` runs by default is the student cdca ships, exported as it is now."""

from cloud.distill.checkpoint import load_distilled
from cloud.export.device_model import DeviceModel
from cloud.export.onnx_export import parity_check
from cloud.shipped import SHIPPED_DISTILLED
from device.bench import BUNDLED_MODEL, models_in
from protocol.manifest import SAMPLE_FILE, load_manifest, verify_model_file


def test_the_bundled_model_is_the_shipped_student_with_its_sample():
    student, vectors, info = load_distilled(SHIPPED_DISTILLED)
    manifests = models_in(BUNDLED_MODEL)
    assert set(manifests) == {"fp32", "int8"}
    fp32 = load_manifest(manifests["fp32"])
    assert list(fp32.class_names) == list(info.class_names)
    path = verify_model_file(fp32, BUNDLED_MODEL / fp32.model_file)  # the hash it names
    model = DeviceModel(student, image_size=info.image_size)
    example = model.neutral_inputs(vectors, batch=2)
    # re-export with `cdca cloud export --int8 --out device/bundled` when this fails
    assert parity_check(model, path, example, trials=1) < 1e-3
    assert (BUNDLED_MODEL / SAMPLE_FILE).stat().st_size < 1_000_000
    assert fp32.held is not None  # the adapting step on held statistics, as devices take it
