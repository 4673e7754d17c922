"""Emulator checkpoints: bit-identical round trip, atomic writes, integrity checks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from emulators import checkpoint as checkpoint_module
from emulators.checkpoint import load_checkpoint, make_lineage_entry, save_checkpoint
from emulators.network import Emulator, ModelError, NetworkConfig, build_network
from emulators.normalisation import fit_normalisation, fit_ranges

NUM_STATE, NUM_FORCING, NUM_SITES = 5, 3, 2


@pytest.fixture(scope="module")
def emulator() -> Emulator:
    rng = np.random.default_rng(0)
    states = np.exp(rng.normal(size=(4, 31, NUM_STATE)))
    forcing = rng.normal(size=(4, 30, NUM_FORCING))
    config = NetworkConfig(
        state_names=tuple(f"s{i}" for i in range(NUM_STATE)),
        forcing_names=tuple(f"f{i}" for i in range(NUM_FORCING)),
        num_sites=NUM_SITES,
        hidden_sizes=(16, 16),
        seed=3,
    )
    graphdef, weights = nnx.split(build_network(config))
    # Perturb the weights so that a reload that silently re-initialised them would be caught.
    weights = jax.tree_util.tree_map(lambda w: w + 0.1 * jnp.sin(jnp.arange(w.size).reshape(w.shape)), weights)
    return Emulator(
        config=config,
        graphdef=graphdef,
        weights=weights,
        normalisation=fit_normalisation(states, forcing),
        ranges=fit_ranges(states, forcing),
        model_error=ModelError(*(jnp.full(NUM_STATE, v, jnp.float32) for v in (0.01, 0.1, 0.2, 0.3))),
        config_hash="sha256:abc123",
        lineage=(
            make_lineage_entry("pretrain", "toy data", skill_before={"val_loss": 1.0}, skill_after={"val_loss": 0.1}),
            make_lineage_entry("refit", "analyses 2024", skill_before=np.float32(0.2), skill_after=0.3, kept=False),
        ),
        parameter_values={"max_growth_rate": 1.25},
    )


def _inputs(num_steps=50):
    rng = np.random.default_rng(1)
    state0 = jnp.asarray(np.exp(rng.normal(size=(3, NUM_SITES, NUM_STATE))), jnp.float32)
    forcing = jnp.asarray(rng.normal(size=(num_steps, 3, NUM_SITES, NUM_FORCING)), jnp.float32)
    day_of_year = jnp.arange(num_steps, dtype=jnp.float32)
    return state0, forcing, day_of_year, jnp.arange(NUM_SITES)


def test_round_trip_is_bit_identical(tmp_path, emulator):
    state0, forcing, day_of_year, site = _inputs()
    save_checkpoint(tmp_path / "ckpt", emulator)
    loaded = load_checkpoint(tmp_path / "ckpt")

    leaves = zip(jax.tree_util.tree_leaves(emulator.weights), jax.tree_util.tree_leaves(loaded.weights), strict=True)
    for a, b in leaves:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    for group in ("normalisation", "ranges", "model_error"):
        for a, b in zip(getattr(emulator, group), getattr(loaded, group), strict=True):
            assert np.array_equal(a, b), group
    assert loaded.config == emulator.config
    assert loaded.config_hash == emulator.config_hash
    assert [e["kind"] for e in loaded.lineage] == ["pretrain", "refit"]
    assert loaded.lineage[1]["kept"] is False and loaded.lineage[1]["skill_before"] == pytest.approx(0.2)
    assert loaded.parameter_values == {"max_growth_rate": 1.25}

    expected_step = emulator.step(state0, forcing[0], day_of_year[0], site)
    actual_step = loaded.step(state0, forcing[0], day_of_year[0], site)
    assert np.array_equal(actual_step, expected_step)
    expected_run = emulator.run(state0, forcing, day_of_year, site, check=False)
    actual_run = loaded.run(state0, forcing, day_of_year, site, check=False)
    assert np.array_equal(actual_run, expected_run)


def test_overwrite_replaces_and_refuses_when_asked(tmp_path, emulator):
    path = tmp_path / "ckpt"
    save_checkpoint(path, emulator)
    save_checkpoint(path, emulator.replace(config_hash="sha256:new"))
    assert load_checkpoint(path).config_hash == "sha256:new"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_checkpoint(path, emulator, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_directory_that_is_not_a_checkpoint_is_never_replaced(tmp_path, emulator):
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not an emulator checkpoint .*notes\.txt"):
        save_checkpoint(other, emulator)
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]

    # A checkpoint with a file written beside it (e.g. the resolved config) is still a checkpoint.
    path = save_checkpoint(tmp_path / "ckpt", emulator)
    (path / "resolved_config.yaml").write_text("seed: 0\n")
    save_checkpoint(path, emulator.replace(config_hash="again"))
    assert load_checkpoint(path).config_hash == "again"


def test_failed_write_leaves_no_partial_checkpoint(tmp_path, emulator, monkeypatch):
    path = tmp_path / "ckpt"

    def failing_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, emulator)
    assert list(tmp_path.iterdir()) == []

    # An existing checkpoint survives a failed overwrite untouched.
    monkeypatch.undo()
    save_checkpoint(path, emulator)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    monkeypatch.setattr(checkpoint_module.json, "dump", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, emulator.replace(config_hash="other"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before


def test_corrupted_or_missing_checkpoint_is_a_clear_error(tmp_path, emulator):
    with pytest.raises(FileNotFoundError, match="no emulator checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    path = save_checkpoint(tmp_path / "ckpt", emulator)
    data = bytearray((path / "arrays.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "arrays.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        load_checkpoint(path)


def test_future_format_version_is_refused(tmp_path, emulator):
    path = save_checkpoint(tmp_path / "ckpt", emulator)
    metadata = json.loads((path / "metadata.json").read_text())
    metadata["format_version"] = 99
    (path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="format_version=99"):
        load_checkpoint(path)


def test_lineage_entries_are_checked(tmp_path, emulator):
    with pytest.raises(ValueError, match="'pretrain', 'refit'"):
        make_lineage_entry("finetune", "x")
    bad = emulator.replace(lineage=({"kind": "refit", "data": object()},))
    with pytest.raises(ValueError, match=r"lineage\[0\]\.data"):
        save_checkpoint(tmp_path / "ckpt", bad)
    assert list(tmp_path.iterdir()) == []
