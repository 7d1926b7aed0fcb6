import dataclasses
import json

from runtime.bundle import CenteringSpec, Manifest
from runtime.preprocessing import PreprocessingSpec

SPEC = CenteringSpec(images=2048, shrinkage=0.5, seed=3, source="random training images of fashion-mnist")  # no defaults


def _image_manifest(**fields) -> Manifest:
    spec = PreprocessingSpec(mode="L", resize=28, crop=28, mean=(0.5,), std=(0.25,))
    return Manifest(name="vision", kind="image-encoder", method="simclr", dim=8,
                    files={"image_encoder": "image_encoder.onnx"}, preprocessing=spec, **fields)


def test_a_manifest_without_centering_reads_as_uncentred_and_keeps_every_other_field():
    manifest = _image_manifest(centering=SPEC, normalized=True)
    data = json.loads(manifest.to_json())
    del data["centering"]  # what a bundle exported without centring holds
    assert Manifest.from_dict(data) == dataclasses.replace(manifest, centering=None)


def test_centering_survives_the_json_round_trip():
    manifest = _image_manifest(centering=SPEC, normalized=True)
    again = Manifest.from_dict(json.loads(manifest.to_json()))
    assert again == manifest and isinstance(again.centering, CenteringSpec)


def test_a_newer_writers_centering_fields_are_ignored_and_the_known_ones_kept():
    data = json.loads(_image_manifest(centering=SPEC, normalized=True).to_json())
    data["centering"]["method"] = "pca-whitening-v2"  # a field this code does not know
    assert Manifest.from_dict(data).centering == SPEC
