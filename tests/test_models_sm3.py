"""The SM3 model (two branches, fusion heads, label modules), its case data and its CLI options."""

from __future__ import annotations

import pytest
import torch

from slimp_cli.core.errors import SlimpError
from slimp_cli.data.shards import ShardIndex, case_index
from slimp_cli.losses.sm3 import sm3_loss
from slimp_cli.models import build_model
from slimp_cli.models.config import ModelConfig
from slimp_cli.models.image import create_image_encoder
from slimp_cli.models.runs import read_config
from slimp_cli.models.sm3 import LABEL_SIZES, LABELS
from slimp_cli.train.data import CaseDataset, PatientItem, collate_cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sm3(fusion="sep_sep"):
    torch.manual_seed(0)
    cfg = ModelConfig(
        variant="sm3",
        image_model="resnet_test",
        img_size=32,
        fusion=fusion,
        proj_dim=8,
        label_dim=16,
    )
    return build_model(cfg, None)


def test_small_stem_keeps_a_32px_image_4x4_at_the_last_stage():
    """The small-image stem (SimCLR's CIFAR-10 one): 3 x 3 stride-1 first convolution, no max
    pool, so the last stage sees 4 x 4 of a 32-px image where the standard stem leaves 1 x 1."""
    x = torch.zeros(2, 3, 32, 32)
    standard, dim = create_image_encoder("resnet_test", img_size=32, allow_cnn=True)
    small, dim_small = create_image_encoder(
        "resnet_test", img_size=32, allow_cnn=True, cnn_stem="small"
    )
    assert dim == dim_small == 64
    assert standard.forward_features(x).shape[-2:] == (1, 1)
    assert small.forward_features(x).shape[-2:] == (4, 4)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity) and small(x).shape == (2, 64)
    big, _ = create_image_encoder("resnet18", img_size=32, allow_cnn=True, cnn_stem="small")
    assert big.conv1.out_channels == 64 and big.forward_features(x).shape[-2:] == (4, 4)
    # through the config: both branches, saved and rebuilt with the same stem
    cfg = ModelConfig(variant="sm3", image_model="resnet_test", img_size=32, cnn_stem="small")
    model = build_model(cfg, None)
    assert model.derm_encoder.conv1.stride == model.clinic_encoder.conv1.stride == (1, 1)
    assert ModelConfig.from_dict(model.config.to_dict()).cnn_stem == "small"
    old = {k: v for k, v in cfg.to_dict().items() if k != "cnn_stem"}  # a config from before
    assert ModelConfig.from_dict(old).cnn_stem == "standard"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="vit_test"), "'vit_test' is not a ResNet-family CNN"),
        (dict(name="resnet_test", weights="r.pth"), "--image-weights r.pth cannot be loaded"),
        (dict(name="resnet_test", cnn_stem="tiny"), "unknown cnn_stem 'tiny'"),
    ],
)
def test_small_stem_refuses_what_it_cannot_apply_to(kwargs, message):
    with pytest.raises(SlimpError, match=message):
        create_image_encoder(**{"img_size": 32, "allow_cnn": True, "cnn_stem": "small", **kwargs})


def test_config_refuses_a_stem_outside_sm3_or_unknown():
    with pytest.raises(SlimpError, match="cnn_stem is an option of SM3"):
        ModelConfig(variant="nested", cnn_stem="small")
    with pytest.raises(SlimpError, match="unknown cnn_stem 'tiny'; choose one of standard, small"):
        ModelConfig(variant="sm3", cnn_stem="tiny")


def batch(has_derm, has_clinic, views=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    has_d, has_c = torch.tensor(has_derm), torch.tensor(has_clinic)
    out = {"has_derm": has_d, "has_clinic": has_c}
    for name, has in (("derm", has_d), ("clinic", has_c)):
        n = int(has.sum())
        if views == 1:
            out[name] = torch.randn(n, 3, 32, 32, generator=g)
        else:
            for v in (1, 2):
                out[f"{name}{v}"] = torch.randn(n, 3, 32, 32, generator=g)
    return out


@pytest.mark.parametrize("fusion", ["sep_sep", "sep_shared", "concat"])
def test_stage1_outputs_are_the_loss_arguments_and_pair_only_complete_cases(fusion):
    model = sm3(fusion)
    out = model(batch([True, True, True, False], [True, False, True, True]))
    assert out["derm1"].shape == out["derm2"].shape == (3, 8)
    assert out["clinic1"].shape == (3, 8) and int(out["unpaired"]) == 2
    cross = (
        ("cross1", "cross2") if fusion == "concat" else ("cross_anchor", "cross_key1", "cross_key2")
    )
    assert all(out[k].shape == (2, 8) for k in cross)  # cases 0 and 2 have both images
    losses = sm3_loss(out, temperature=0.1)
    losses["loss"].backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("derm_encoder") for n in trained)
    assert any(n.startswith("clinic_encoder") for n in trained)
    assert not any(n.startswith(("label_proj", "relation", "prototypes")) for n in trained)
    shared = {"sep_sep": "cross_derm", "sep_shared": "cross_shared", "concat": "cross_concat"}
    assert hasattr(model, shared[fusion])
    assert model.inputs.levels[-2:] == (
        ("derm", "clinic") if fusion == "concat" else ("derm_mm", "clinic_mm")
    )


def test_branches_have_separate_weights_and_stages_train_their_modules():
    model = sm3()
    a = dict(model.derm_encoder.named_parameters())
    b = dict(model.clinic_encoder.named_parameters())
    assert a.keys() == b.keys() and not torch.equal(a["conv1.weight"], b["conv1.weight"])
    params = model.set_stage("multilabel")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("label_proj", "relation", "prototypes")) for n in names)
    assert len(params) == len(names)
    relation = model.relation
    assert relation.self_attn.num_heads == 1 and relation.linear1.out_features == 128
    assert relation.dropout.p == 0.1
    out = model(batch([True, True, False], [False, True, True], views=1))
    logits, emb = out["logits"], out["embeddings"]
    assert logits.shape == (3, len(LABELS), 5) and emb.shape == (3, 8, 16)
    # the relation layer's output as the official run keeps it (no L2 norm): LayerNorm'd,
    # so about sqrt(16) long, not 1
    assert (emb.norm(dim=-1) > 2).all()
    centroids = [torch.nn.functional.normalize(torch.randn(s, 16), dim=1) for s in LABEL_SIZES]
    model.set_prototypes(centroids)
    assert torch.equal(model.prototypes[3].weight, centroids[3])
    logits = model.label_logits(emb)
    for k, size in enumerate(LABEL_SIZES):  # score = embedding . unit centroid
        assert torch.allclose(logits[:, k, :size], emb[:, k] @ centroids[k].T)
        assert torch.isinf(logits[:, k, size:]).all()
    with pytest.raises(Exception, match="adapt"):
        model.set_trainable("all")


def test_encode_cases_levels_and_missing_modalities():
    model = sm3().eval()
    b = batch([True, True, False], [False, True, True], views=1)
    levels = ("image", "derm", "clinic", "derm_mm", "clinic_mm", "labels")
    with torch.no_grad():
        out = model.encode_cases(b["derm"], b["clinic"], b["has_derm"], b["has_clinic"], levels)
    dims = model.feature_dims
    assert {k: v.shape[1] for k, v in out.items()} == {k: dims[k] for k in levels}
    assert torch.equal(out["image"], torch.cat([out["derm"], out["clinic"]], 1))
    assert not out["derm"][2].any() and not out["clinic"][0].any()  # missing: zeros
    assert not out["derm_mm"][2].any() and out["derm_mm"][0].any()


def test_cases_group_a_lesions_images_by_modality(paired_shards):
    index = ShardIndex.open(paired_shards)
    cases = case_index(index, ("dermoscopic", "clinical"))
    assert len(cases) == 64
    missing = [c for c in cases if c.image("clinical") is None]
    assert len(missing) == 1 and all(c.image("dermoscopic") is not None for c in cases)
    data = CaseDataset(index, cases, preprocess=sm3().preprocess, views=2)
    item = PatientItem(cases.index(missing[0]), (), (0, 0, 0, 1))
    a, b = data[item], data[item]
    assert torch.equal(a["derm"], b["derm"]) and "clinic" not in a  # deterministic, no clinic
    other = data[PatientItem(item.patient, (), (0, 0, 0, 2))]
    assert not torch.equal(a["derm"], other["derm"])  # another augmentation seed
    assert a["derm"].shape == (2, 3, 32, 32)
    samples = [data[PatientItem(i, (), (0, 0, 0, i))] for i in range(4)] + [a]
    batch_ = collate_cases(samples)
    assert batch_["has_clinic"].tolist() == [True] * 4 + [False]
    assert batch_["derm1"].shape[0] == 5 and batch_["clinic2"].shape[0] == 4
    assert batch_["n_images"] == 2 * 9 and batch_["case"].tolist()[-1] == item.patient


@pytest.mark.parametrize("views, augment", [(2, True), (1, True), (1, False)])
def test_a_batch_is_finished_as_each_image_alone(paired_shards, views, augment):
    """`batch_to` finishes a case batch (uint8 views + colour draws, the jitter batched) into
    the pixels each image gets from its own view and jitter (`Preprocess.augment`, or the
    eval path unaugmented), in every key `collate_cases` writes; missing clinical images
    leave their rows out."""
    import numpy as np

    from slimp_cli.data.transforms import decode_image
    from slimp_cli.train.batches import batch_to

    index = ShardIndex.open(paired_shards)
    cases = case_index(index, ("dermoscopic", "clinical"))
    pre = sm3().preprocess
    data = CaseDataset(index, cases, preprocess=pre, views=views, augment=augment)
    missing = next(i for i, c in enumerate(cases) if c.image("clinical") is None)
    picked = [0, missing, 1, 2]
    items = [PatientItem(i, (), (0, 0, 0, i)) for i in picked]
    batch = batch_to(collate_cases([data[it] for it in items]), torch.device("cpu"), pre)
    expected: dict[str, list] = {}
    for i in picked:
        rng = np.random.default_rng([0, 0, 0, i])
        rec = index.patient(cases[i].patient)
        for modality, j in cases[i].images:
            img = decode_image(rec.read_image(j))
            short = CaseDataset.SHORT[modality]
            for v in range(views):
                x = pre.augment(img, rng, data.recipe) if augment else pre.load(rec.read_image(j))
                key = short if views == 1 else f"{short}{v + 1}"
                expected.setdefault(key, []).append(x)
    assert set(expected) == {k for k in batch if k.startswith(("derm", "clinic"))}
    assert not any("jitter" in k for k in batch)  # used up by batch_to
    for key, images in expected.items():
        assert batch[key].dtype == torch.float32 and len(images) == len(batch[key])
        torch.testing.assert_close(batch[key], torch.stack(images), rtol=0, atol=1e-5)
    assert batch["has_clinic"].tolist() == [True, False, True, True]


def test_cli_options_and_the_two_stages(paired_shards, tmp_path, run_cli):
    common = ["--image-model", "resnet_test", "--img-size", "32", "--max-steps", "1"]
    common += ["--workers", "0", "--device", "cpu", "--no-progress", "-B", "16"]
    run1 = tmp_path / "run1"
    res = run_cli(
        "pretrain",
        paired_shards,
        "--out",
        run1,
        "--method",
        "sm3",
        "--fusion",
        "sep_shared",
        "--proj-dim",
        "8",
        "--label-dim",
        "16",
        *common,
    )
    assert res.exit_code == 0, res.output
    assert "sm3" in res.output and "step 1" in res.output
    cfg = read_config(run1)
    assert cfg["model"]["fusion"] == "sep_shared" and cfg["model"]["proj_dim"] == 8
    # no --image-weights: the from-scratch recipe, announced once and recorded, with the
    # small-image stem at 32 px
    assert res.stderr.count("recipe 'scratch'") == 1 and "small stem" in res.stderr
    assert cfg["model"]["cnn_stem"] == "small"
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["epochs"] == 400
    assert cfg["train"]["augment_recipe"] == "mild" and cfg["train"]["augment"]
    assert cfg["train"]["warmup_steps"] == 0
    assert cfg["sm3"]["recipe"]["name"] == "scratch"
    assert cfg["sm3"]["recipe"]["overridden"] == {"patients_per_batch": 16}
    run2 = tmp_path / "run2"
    res = run_cli(
        "pretrain",
        paired_shards,
        "--out",
        run2,
        "--method",
        "sm3",
        "--stage",
        "multilabel",
        "--init",
        run1,
        *common[4:],
    )
    assert res.exit_code == 0, res.output
    cfg = read_config(run2)
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["epochs"] == 150  # the paper's stage 2
    assert cfg["train"]["temperature"] == 1.0  # the official run's stage-2 tau
    assert cfg["sm3"]["recipe"]["name"] == "multilabel" and "recipe 'multilabel'" in res.stderr
    assert cfg["model"]["fusion"] == "sep_shared" and cfg["train"]["init"] == str(run1)
    res = run_cli(
        "pretrain",
        paired_shards,
        "--out",
        tmp_path / "r3",
        "--method",
        "sm3",
        "--stage",
        "multilabel",
        "--init",
        run2,
        *common[4:],
    )
    assert res.exit_code == 1 and "not a stage-1 SM3 run" in res.stderr


def test_cli_cnn_stem_is_given_or_refused_in_one_line(paired_shards, tmp_path, run_cli):
    common = ["--method", "sm3", "--image-model", "resnet_test", "--input-size", "32"]
    common += ["--max-steps", "1", "--workers", "0", "--device", "cpu", "--no-progress"]
    common += ["-B", "16", "--proj-dim", "8", "--label-dim", "16"]
    run = tmp_path / "run"
    res = run_cli("pretrain", paired_shards, "--out", run, "--cnn-stem", "standard", *common)
    assert res.exit_code == 0, res.output
    assert read_config(run)["model"]["cnn_stem"] == "standard" and "standard stem" in res.stderr
    res = run_cli("pretrain", paired_shards, "--out", tmp_path / "bad", "--cnn-stem", "x", *common)
    assert res.exit_code == 1
    assert res.stderr == "error: unknown cnn_stem 'x'; choose one of standard, small\n"
