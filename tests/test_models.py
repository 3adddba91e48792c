"""Models: TRACE missing-value handling, forward contracts of each variant on a tiny ViT, adapt."""

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.schema import ResolvedSchema, encode_tabular
from slimp_cli.losses import compute_loss
from slimp_cli.models import (
    TraceEncoder,
    build_model,
    create_image_encoder,
    patch_embedding_parameters,
    replace_tabular_inputs,
    scatter_to_patients,
)
from slimp_cli.models.config import ModelConfig


def num(name, mean=0.0, std=1.0):
    return {"name": name, "type": "numerical", "mean": mean, "std": std, "missing_rate": 0.1}


def cat(name, vocab, type_="categorical"):
    return {"name": name, "type": type_, "vocab": vocab, "missing_rate": 0.1}


def make_schema(patient=True, lesion=None):
    return ResolvedSchema.from_dict(
        {
            "format": "slimp-schema",
            "version": 1,
            "name": "toy",
            "patient_features": [
                num("age", 50, 10),
                cat("sex", ["f", "m"]),
                cat("smoke", ["false", "true"], "boolean"),
            ]
            if patient
            else [],
            "derived_patient_features": [num("n_lesions", 3, 2)] if patient else [],
            "lesion_features": lesion
            if lesion is not None
            else [cat("site", ["arm", "back", "face"]), num("diam", 4, 2), num("hue", 0, 1)],
        }
    )


def cfg(variant="nested", **kw):
    return ModelConfig(variant=variant, image_model="vit_test", img_size=32, **kw)


PATIENTS = [
    {"age": 61, "sex": "m", "smoke": True, "n_lesions": 3},
    {"age": None, "sex": "f", "smoke": None, "n_lesions": 1},
    {"age": 35, "sex": None, "smoke": False, "n_lesions": 2},
]
LESIONS = [  # (patient, fields)
    (0, {"site": "arm", "diam": 3.0, "hue": 0.1}),
    (2, {"site": "face", "diam": None, "hue": -1.0}),
    (0, {"site": None, "diam": 7.5, "hue": None}),
    (1, {"site": "back", "diam": 2.0, "hue": 0.4}),
    (2, {"site": "arm", "diam": 5.0, "hue": 0.0}),
    (0, {"site": "back", "diam": 1.0, "hue": 2.0}),
]


def make_batch(model, order=None, seed=0):
    order = list(range(len(LESIONS))) if order is None else order
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(len(LESIONS), 3, 32, 32, generator=g)[order]
    lesions = [LESIONS[i] for i in order]
    records = [{**PATIENTS[p], **fields} for p, fields in lesions]  # flat needs patient fields
    batch = {
        "images": images,
        "images2": images.flip(-1),
        "patient_index": torch.tensor([p for p, _ in lesions]),
    }
    if model.lesion_features is not None:
        batch["lesion_tab"] = encode_tabular(model.lesion_features, records)
    if model.patient_features is not None:
        batch["patient_tab"] = encode_tabular(model.patient_features, PATIENTS)
    return batch


# -- TRACE --------------------------------------------------------------------------------------
def test_trace_shapes_padding_and_missing_values():
    torch.manual_seed(0)
    enc = TraceEncoder(cardinalities=[3, 2], n_numerical=2, d=16).eval()
    for emb in enc.inputs.categorical:
        assert emb.weight[0].abs().sum() == 0  # padding row (missing) is a zero token
    categorical = torch.tensor([[1, 0], [3, 2]])
    numerical = torch.tensor([[0.5, 0.0], [1.0, -2.0]])
    mask = torch.tensor([[True, False], [True, True]])
    out = enc(categorical, numerical, mask)
    assert out.shape == (2, 16)
    tokens = enc.inputs(categorical, numerical, mask)
    assert tokens.shape == (2, 4, 16)
    assert tokens[0, 1].abs().sum() == 0 and tokens[0, 3].abs().sum() == 0  # missing -> 0
    # the value under a missing mask never matters
    changed = numerical.clone()
    changed[0, 1] = 123.0
    assert torch.equal(enc(categorical, changed, mask), out)
    # ...while a present value does
    changed = numerical.clone()
    changed[1, 1] = 3.0
    assert not torch.allclose(enc(categorical, changed, mask)[1], out[1])
    # a missing categorical differs from a present one; rows do not leak into each other
    other = categorical.clone()
    other[1, 0] = 0
    moved = enc(other, numerical, mask)
    assert not torch.allclose(moved[1], out[1]) and torch.allclose(moved[0], out[0])


def test_trace_output_is_mean_of_feature_tokens_after_a_post_ln_transformer():
    torch.manual_seed(0)
    enc = TraceEncoder(cardinalities=[4], n_numerical=3, d=8, n_layers=2).eval()
    layer = enc.transformer.layers[0]
    assert not layer.norm_first and len(enc.transformer.layers) == 2
    assert layer.linear1.out_features == 32 and layer.self_attn.num_heads == 2
    categorical, numerical = torch.tensor([[2], [0], [4]]), torch.randn(3, 3)
    mask = torch.rand(3, 3) > 0.3
    tokens = enc.inputs(categorical, numerical, mask)
    seq = torch.cat([enc.cls_token.expand(3, -1, -1), tokens], dim=1)
    hidden = enc.transformer(seq)
    want = hidden[:, 1:].mean(dim=1)
    assert torch.allclose(enc(categorical, numerical, mask), want, atol=1e-6)
    assert not torch.allclose(want, hidden[:, 0])  # the CLS output is not the pooled feature


def test_trace_without_categorical_or_numerical_features():
    only_num = TraceEncoder(cardinalities=[], n_numerical=3, d=8)
    assert only_num(
        torch.zeros(4, 0, dtype=torch.long), torch.randn(4, 3), torch.ones(4, 3, dtype=torch.bool)
    ).shape == (4, 8)
    only_cat = TraceEncoder(cardinalities=[5], n_numerical=0, d=8)
    assert only_cat(
        torch.tensor([[1], [0]]), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool)
    ).shape == (2, 8)
    with pytest.raises(SlimpError, match="at least one feature"):
        TraceEncoder(cardinalities=[], n_numerical=0, d=8)
    with pytest.raises(SlimpError, match="divisible"):
        TraceEncoder(cardinalities=[2], n_numerical=1, d=9, n_heads=2)
    with pytest.raises(SlimpError, match="built for 1 and 1"):
        only = TraceEncoder(cardinalities=[2], n_numerical=1, d=8)
        only(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 1), torch.ones(2, 1, dtype=bool))


def test_trace_input_parameters_are_inputs_and_cls():
    enc = TraceEncoder(cardinalities=[3], n_numerical=2, d=8)
    ids = {id(p) for p in enc.input_parameters()}
    assert id(enc.cls_token) in ids
    assert all(id(p) in ids for p in enc.inputs.parameters())
    assert not any(id(p) in ids for p in enc.transformer.parameters())


# -- image encoder ------------------------------------------------------------------------------
def test_unknown_image_model_is_a_clear_error():
    with pytest.raises(SlimpError, match="unknown image model 'vit_nope'.*vit_small_patch16_224"):
        create_image_encoder("vit_nope", img_size=32)
    with pytest.raises(SlimpError, match="not a multiple of the patch size 8"):
        create_image_encoder("vit_test", img_size=30)


def test_local_weights_file_round_trip(tmp_path):
    torch.manual_seed(1)
    source, dim = create_image_encoder("vit_test", img_size=32)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as saved by DDP
    state["head.weight"] = torch.zeros(10, dim)  # a classifier head is dropped
    path = tmp_path / "vit.pt"
    torch.save({"state_dict": state}, path)
    torch.manual_seed(2)
    loaded, _ = create_image_encoder("vit_test", img_size=32, weights=path)
    fresh, _ = create_image_encoder("vit_test", img_size=32)
    x = torch.randn(2, 3, 32, 32)
    source.eval(), loaded.eval(), fresh.eval()
    assert torch.allclose(loaded(x), source(x), atol=1e-6)
    assert not torch.allclose(fresh(x), source(x))
    # through the model config too
    model = build_model(cfg("image", image_weights=str(path)), None).eval()
    assert torch.allclose(model.encode_image(x), source(x), atol=1e-6)
    safetensors = pytest.importorskip("safetensors.torch")
    st_path = tmp_path / "vit.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(st_path))
    loaded_st, _ = create_image_encoder("vit_test", img_size=32, weights=st_path)
    assert torch.allclose(loaded_st.eval()(x), source(x), atol=1e-6)


def test_bad_weights_files(tmp_path):
    source, _ = create_image_encoder("vit_test", img_size=32)
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(SlimpError, match="lack .* blocks.1"):
        create_image_encoder("vit_test", img_size=32, weights=tmp_path / "partial.pt")
    with pytest.raises(SlimpError, match="not found"):
        create_image_encoder("vit_test", img_size=32, weights=tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(SlimpError, match="cannot read"):
        create_image_encoder("vit_test", img_size=32, weights=tmp_path / "junk.pt")


def test_patch_embedding_parameters_are_patch_embed_only():
    enc, _ = create_image_encoder("vit_test", img_size=32)
    chosen = {id(p) for p in patch_embedding_parameters(enc)}
    names = {n for n, p in enc.named_parameters() if id(p) in chosen}
    assert names == {"patch_embed.proj.weight", "patch_embed.proj.bias"}


# -- SlimpModel ---------------------------------------------------------------------------------
def test_nested_forward_contract_and_phenotype():
    torch.manual_seed(0)
    model = build_model(cfg(embed_dim=32, tab_dim=16), make_schema()).eval()
    assert model.config.embed_dim == 32 and model.config.tab_dim == 16
    batch = make_batch(model)
    out = model(batch)
    B, N, D = 3, 3, 32
    assert out["image"].shape == (B, N, D) and out["lesion"].shape == (B, N, D)
    assert out["phenotype"].shape == (B, D) and out["patient"].shape == (B, D)
    assert out["mask"].tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    w = model.encode_image(batch["images"])
    h = model.encode_lesion(batch["lesion_tab"])
    for p in range(B):
        rows = (batch["patient_index"] == p).nonzero().flatten()
        n = len(rows)
        assert torch.allclose(out["image"][p, :n], w[rows], atol=1e-5)
        assert torch.allclose(out["lesion"][p, :n], h[rows], atol=1e-5)
        assert out["image"][p, n:].abs().sum() == 0
        # z_p = Linear(mean over the patient's lesions of concat(w, h))
        pooled = torch.cat([w[rows], h[rows]], dim=1).mean(0)
        assert torch.allclose(out["phenotype"][p], model.phenotype_layer(pooled), atol=1e-5)
        per_lesion = model.phenotype(w[rows], h[rows])
        assert torch.allclose(out["phenotype"][p], per_lesion.mean(0), atol=1e-5)
    assert torch.allclose(out["patient"], model.encode_patient(batch["patient_tab"]), atol=1e-5)
    assert model.feature_dims == {"image": 32, "lesion": 32, "patient": 32}


def test_shuffled_lesion_order_maps_to_the_right_patients():
    torch.manual_seed(0)
    model = build_model(cfg(), make_schema()).eval()
    assert model.config.embed_dim == 64  # default D = the image encoder's width
    out = model(make_batch(model))
    perm = [5, 1, 3, 0, 4, 2]
    shuffled = model(make_batch(model, order=perm))
    assert torch.allclose(shuffled["phenotype"], out["phenotype"], atol=1e-5)
    assert torch.allclose(shuffled["patient"], out["patient"], atol=1e-5)
    # same multiset of lesions per patient (order inside a patient follows the batch)
    for p in range(3):
        n = int(out["mask"][p].sum())
        a = out["image"][p, :n].sum(0)
        b = shuffled["image"][p, :n].sum(0)
        assert torch.allclose(a, b, atol=1e-4)
    # patient 0's first lesion in the shuffled batch is original lesion 5
    assert torch.allclose(shuffled["image"][0, 0], out["image"][0, 2], atol=1e-5)


def test_scatter_to_patients_any_order():
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    padded, mask = scatter_to_patients(values, torch.tensor([2, 0, 2, 2]), 3)
    assert padded.squeeze(-1).tolist() == [[2.0, 0, 0], [0, 0, 0], [1.0, 3.0, 4.0]]
    assert mask.tolist() == [[True, False, False], [False] * 3, [True] * 3]


def test_flat_and_image_variants():
    schema = make_schema()
    flat = build_model(cfg("flat"), schema).eval()
    assert [f["name"] for f in flat.lesion_features] == [
        "age",
        "sex",
        "smoke",
        "n_lesions",
        "site",
        "diam",
        "hue",
    ]
    out = flat(make_batch(flat))
    assert set(out) == {"image", "tabular"}
    assert out["image"].shape == out["tabular"].shape == (6, 64)
    with pytest.raises(SlimpError, match="no patient metadata"):
        flat.encode_patient(make_batch(flat)["lesion_tab"])
    image = build_model(cfg("image", embed_dim=16), None)
    out = image(make_batch(image))
    assert out["view1"].shape == out["view2"].shape == (6, 16)
    assert image.feature_dims == {"image": 64}  # evaluated on backbone features
    assert compute_loss("image", out, temperature=0.1, lam=0.9)["loss"].isfinite()


def test_variant_needs_the_right_metadata():
    with pytest.raises(SlimpError, match="no patient-level features"):
        build_model(cfg("nested"), make_schema(patient=False))
    flat = build_model(cfg("flat"), make_schema(patient=False))
    assert [f["name"] for f in flat.lesion_features] == ["site", "diam", "hue"]
    with pytest.raises(SlimpError, match="no metadata"):
        build_model(cfg("flat"), make_schema(patient=False, lesion=[]))


def test_training_step_gradients_finite():
    torch.manual_seed(0)
    model = build_model(cfg(), make_schema())
    loss = compute_loss("nested", model(make_batch(model)), temperature=0.1, lam=0.9)["loss"]
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.phenotype_layer.weight.grad.abs().sum() > 0


def test_set_trainable_embeddings():
    model = build_model(cfg(), make_schema())
    trainable = model.set_trainable("embeddings")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == len(names)
    assert "image_encoder.patch_embed.proj.weight" in names
    assert "lesion_encoder.cls_token" in names
    assert "patient_encoder.inputs.numerical.0.weight" in names
    assert not any(
        n.startswith(
            ("image_encoder.blocks", "lesion_encoder.transformer", "phenotype_layer", "image_proj")
        )
        for n in names
    )
    assert len(model.set_trainable("all")) == len(list(model.parameters()))
    with pytest.raises(SlimpError, match="--tune"):
        model.set_trainable("half")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_replace_tabular_inputs_keeps_shared_weights():
    torch.manual_seed(0)
    model = build_model(cfg(), make_schema())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = make_schema(
        lesion=[cat("site", ["hand", "leg"]), cat("color", ["a", "b", "c", "d"]), num("elev", 1, 1)]
    )
    replace_tabular_inputs(model, target)
    after = model.state_dict()
    kept = [k for k in before if ".inputs." not in k]
    assert _same({k: before[k] for k in kept}, {k: after[k] for k in kept})
    assert after["lesion_encoder.inputs.categorical.1.weight"].shape == (5, 64)
    assert model.variant == "nested"
    assert model.lesion_features == target.lesion_features
    assert model.patient_features == target.patient_all
    out = model(make_batch_for(model, target))
    assert out["image"].shape[0] == 3
    # the adapted architecture rebuilds from (config, target schema)
    rebuilt = build_model(model.config, target)
    rebuilt.load_state_dict(model.state_dict())


def test_replace_tabular_inputs_without_patient_features_goes_flat():
    torch.manual_seed(0)
    model = build_model(cfg(), make_schema())
    transformer = {k: v.clone() for k, v in model.lesion_encoder.transformer.state_dict().items()}
    target = make_schema(patient=False)
    replace_tabular_inputs(model, target)
    assert model.variant == "flat" and model.config.variant == "flat"
    assert model.patient_features is None and getattr(model, "phenotype_layer", None) is None
    assert _same(transformer, model.lesion_encoder.transformer.state_dict())
    build_model(model.config, target).load_state_dict(model.state_dict())  # strict
    out = model(make_batch(model))
    assert set(out) == {"image", "tabular"}
    with pytest.raises(SlimpError, match="no tabular inputs"):
        replace_tabular_inputs(build_model(cfg("image"), None), target)


def make_batch_for(model, schema):
    """A batch over the target schema's features (random values, some missing)."""
    names = [f["name"] for f in model.lesion_features]
    records = [{n: None for n in names} for _ in LESIONS]
    records[0].update({"site": "hand", "color": "c", "elev": 2.0})
    return {
        "images": torch.randn(len(LESIONS), 3, 32, 32),
        "patient_index": torch.tensor([p for p, _ in LESIONS]),
        "lesion_tab": encode_tabular(model.lesion_features, records),
        "patient_tab": encode_tabular(model.patient_features, PATIENTS),
    }


# -- config -------------------------------------------------------------------------------------
def test_model_config_validation_and_round_trip():
    c = ModelConfig(variant="flat", image_model="vit_tiny_patch16_224", embed_dim=128)
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert ModelConfig.from_dict({}) == ModelConfig()
    with pytest.raises(SlimpError, match="unknown variant 'deep'"):
        ModelConfig(variant="deep")
    with pytest.raises(SlimpError, match="img_size must be a positive integer"):
        ModelConfig(img_size=0)
    with pytest.raises(SlimpError, match="divisible by tab_heads"):
        ModelConfig(tab_dim=10, tab_heads=3)
    with pytest.raises(SlimpError, match="tab_dropout"):
        ModelConfig(tab_dropout=1.0)
    with pytest.raises(SlimpError, match="unknown model config key.*depth"):
        ModelConfig.from_dict({"depth": 3})
    with pytest.raises(TypeError):
        ModelConfig("nested")  # keyword-only
