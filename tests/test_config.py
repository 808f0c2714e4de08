import tomllib

import pytest

from tumls_qp.config import (
    ClusterConfig,
    PipelineConfig,
    TileConfig,
    config_from_dict,
    dump_config,
    load_config,
    replace_in,
)
from tumls_qp.errors import ConfigError


def test_defaults_round_trip_through_toml():
    config = PipelineConfig()
    assert config_from_dict(tomllib.loads(dump_config(config))) == config


def test_changed_config_round_trips(tmp_path):
    config = replace_in(PipelineConfig(), **{"tiles.tile_um": 64, "clusters.k": 3, "slide.mpp": 0.25, "seed": 7})
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    loaded = load_config(path)
    assert loaded == config
    assert loaded.tiles.tile_um == 64.0 and isinstance(loaded.tiles.tile_um, float)
    assert loaded.clusters.k == 3 and loaded.slide.mpp == 0.25 and loaded.seed == 7


def test_replace_in_ignores_unset_flags():
    assert replace_in(PipelineConfig(), **{"clusters.k": None, "slide.mpp": None}) == PipelineConfig()


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"tiles": {"tile_px": 12}}, "tiles.tile_px must be one of 8, 16, 32, 64; got 12"),
        ({"tiles": {"tilepx": 16}}, "unknown option(s) tilepx in [tiles]"),
        ({"bogus": {}}, "unknown option(s) bogus in the top level"),
        ({"slide": {"mpp": "0.25"}}, "slide.mpp must be a number or unset; got '0.25'"),
        ({"slide": {"mpp": -1}}, "slide.mpp must be a pixel size"),
        ({"clusters": {"k": 0}}, "clusters.k must be an integer >= 1"),
        ({"clusters": {"k_min": 3, "k_max": 2}}, "clusters.k_max must be an integer >= clusters.k_min (3)"),
        ({"embedding": {"device": "gpu"}}, "embedding.device must be one of auto, cpu, cuda, mps; got 'gpu'"),
        ({"embedding": {"split": [0.5, 0.5]}}, "embedding.split must be a list of 3 values"),
        ({"embedding": {"split": [0.5, 0.4, 0.3]}}, "sum to 1"),
        ({"embedding": {"max_epochs": True}}, "embedding.max_epochs must be an integer; got True"),
        ({"seed": -1}, "seed must be an integer in [0, 2**32)"),
        ({"tiles": 5}, "tiles must be a table"),
    ],
)
def test_bad_values_name_the_option(data, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert fragment in str(info.value)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[tiles\ntile_um = 3")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_stage_configs_validate_directly():
    with pytest.raises(ConfigError, match="tiles.min_tissue_fraction"):
        TileConfig(min_tissue_fraction=0)
    with pytest.raises(ConfigError, match="clusters.linkage_max_tiles"):
        ClusterConfig(linkage_max_tiles=10)
    assert TileConfig(tile_um=256, tile_px=16).lowres_mpp == 16.0


def test_every_option_is_documented_in_the_readme():
    import dataclasses
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    config = PipelineConfig()
    names = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            names += [f"{f.name}.{g.name}" for g in dataclasses.fields(value)]
        else:
            names.append(f.name)
    missing = [n for n in names if f"`{n}`" not in readme]
    assert not missing, f"options missing from README's Configuration table: {missing}"
