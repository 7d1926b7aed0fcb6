import dataclasses
import json

from runtime.bundle import CenteringSpec, Manifest
from runtime.preprocessing import PreprocessingSpec


def _image_manifest(**fields) -> Manifest:
    spec = PreprocessingSpec(mode="L", resize=28, crop=28, mean=(0.5,), std=(0.25,))
    fields = {"normalized": False, **fields}
    return Manifest(name="vision", kind="image-encoder", method="simclr", dim=8,
                    files={"image_encoder": "image_encoder.onnx"}, preprocessing=spec, **fields)


def test_a_manifest_written_before_centering_reads_as_uncentred():
    data = json.loads(_image_manifest().to_json())
    del data["centering"]  # what bundles exported before the field existed hold
    manifest = Manifest.from_dict(data)
    assert manifest.centering is None and not manifest.normalized


def test_centering_survives_the_json_round_trip():
    spec = CenteringSpec(images=2048, shrinkage=1.0, seed=3, source="random training images of fashion-mnist")
    manifest = _image_manifest(centering=spec, normalized=True)
    again = Manifest.from_dict(json.loads(manifest.to_json()))
    assert again == manifest and isinstance(again.centering, CenteringSpec)


def test_a_newer_writers_centering_fields_are_ignored():
    data = json.loads(_image_manifest(centering=CenteringSpec(images=10)).to_json())
    data["centering"]["method"] = "pca-whitening-v2"  # a field this code does not know
    assert Manifest.from_dict(data).centering == CenteringSpec(images=10)
    assert dataclasses.asdict(CenteringSpec(images=10))["shrinkage"] == 1.0
