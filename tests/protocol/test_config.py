"""The project configuration: one schema, layers, errors that name the file and key, the reference."""

from dataclasses import replace
from pathlib import Path

import pytest

from protocol.config.adaptation import DeviceSettings
from protocol.config.loader import to_flat, to_toml
from protocol.config.project import ProjectConfig, load_project, with_settings
from protocol.config.reference import attribute_docs, reference_markdown
from protocol.config.wire import settings_from_wire, settings_to_wire
from protocol.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path):
    path = tmp_path / "cdca.toml"
    path.write_text(
        '[data]\ntrain = "npz:images/set.npz"\nimage_size = 48\n'
        "[adaptation.device]\nbudget = 0.05\n[fleet]\ndevices = 3\n"
    )
    return path


def test_no_file_is_the_built_in_world(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CDCA_PROJECT", raising=False)
    config = load_project()
    assert config.file is None
    assert config.is_builtin_project
    assert config.data.shifted == str(tmp_path / "data/fashion-mnist-c")
    assert config.adaptation.synthetic.count == 64  # one default, everywhere


def test_a_cdca_toml_in_the_working_folder_is_found(project, monkeypatch):
    monkeypatch.chdir(project.parent)
    monkeypatch.delenv("CDCA_PROJECT", raising=False)
    assert load_project().file == project


def test_layers_file_then_overlay_then_flags_then_set(project, tmp_path):
    overlay = tmp_path / "scenario.toml"
    overlay.write_text("[fleet]\ndevices = 5\nper_domain = 7\n")
    config = load_project(
        project,
        overlays=[overlay],
        flags={"fleet.per_domain": 9, "fleet.seed": None},
        assignments=["fleet.per_domain=11", "teacher.model=ViT-B-32", "fleet.peers=source,tent"],
    )
    assert config.adaptation.device.budget == 0.05  # the file
    assert config.fleet.devices == 5  # the overlay over the file
    assert config.fleet.per_domain == 11  # --set over the flag over the overlay
    assert config.fleet.seed == 0  # a flag left unset changes nothing
    assert config.teacher.model == "ViT-B-32"  # a bare word needs no quotes
    assert config.fleet.peers == ("source", "tent")  # lists as commas on the command line


def test_relative_paths_are_relative_to_the_project_file(project):
    config = load_project(project)
    assert config.data.train == f"npz:{project.parent / 'images/set.npz'}"
    assert config.data.shifted == str(project.parent / "data/fashion-mnist-c")
    assert config.server.state_dir == project.parent / "runs/cloud-state"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[adaptation.device]\nbudjet = 0.2\n",
            "unknown setting 'adaptation.device.budjet'; did you mean 'adaptation.device.budget'",
        ),
        ("[adaptaton]\n", "unknown setting 'adaptaton'; did you mean 'adaptation'"),
        (
            '[adaptation.vplu]\nsteps = "ten"\n',
            "adaptation.vplu.steps must be a whole number, got 'ten'",
        ),
        (
            "[adaptation.device]\nbudget = 1.5\n",
            "[adaptation.device] budget must be in (0, 1], got 1.5",
        ),
        (
            '[data]\nresize = "crp"\n',
            "data.resize must be one of pad, crop, stretch, none, got 'crp'. Did you mean 'crop'?",
        ),
        ("[fleet]\ndevices = true\n", "fleet.devices must be a whole number, got True"),
        ('[server.tls]\ncert = "c.pem"\n', "[server.tls] needs key"),
        ('[data]\ntrain = "npy:x"\n', "a source is fashion-mnist, npz:FILE or image-folder:DIR"),
        ('[teacher]\npretrained = "openai"\n', "pretrained is for open_clip models"),
        ("[fleet\n", "is not valid TOML"),
    ],
)
def test_a_bad_value_is_one_error_naming_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "cdca.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_project(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_an_error_from_the_command_line_names_the_flag(project):
    with pytest.raises(
        ConfigError, match=r"^--set fleet.devises=2: unknown setting 'fleet.devises'"
    ):
        load_project(project, assignments=["fleet.devises=2"])
    with pytest.raises(
        ConfigError, match="^the command line: fleet.devices must be a whole number"
    ):
        load_project(project, flags={"fleet.devices": "two"})


def test_the_resolved_settings_load_back_as_the_same_project(project):
    config = load_project(project, assignments=["server.tls.cert=c.pem", "server.tls.key=k.pem"])
    written = project.parent / "resolved.toml"
    written.write_text(to_toml(config, "resolved"))
    again = load_project(written)
    assert again == config
    assert again.server.tls.cert == Path.cwd() / "c.pem"  # --set paths: from the working folder


def test_flower_style_dotted_keys_map_onto_the_same_schema(project):
    flat = to_flat(load_project(project))
    assert flat["adaptation.device.budget"] == 0.05
    assert flat["fleet.peers"] == "source,bn_adapt,tent"
    config = load_project(None, dotted={k: v for k, v in flat.items() if k.startswith("fleet.")})
    assert config.fleet == load_project(project).fleet


def test_changing_settings_by_key_keeps_the_rest(project):
    config = load_project(project)
    changed = with_settings(config, {"adaptation.device.gate": "off"}, "a test")
    assert changed.adaptation.device.gate == "off"
    assert replace(changed.adaptation, device=config.adaptation.device) == config.adaptation
    with pytest.raises(ConfigError, match="^a test: adaptation.device.gate must be one of"):
        with_settings(config, {"adaptation.device.gate": "vote"}, "a test")


def test_device_settings_travel_as_toml_literals_and_unknown_keys_are_ignored():
    settings = DeviceSettings(budget=0.05, score="margin", gate="off", class_balance=False)
    wire = settings_to_wire(settings)
    assert wire["score"] == '"margin"'
    received, unknown = settings_from_wire({**wire, "from_a_newer_cloud": "1"})
    assert received == settings
    assert unknown == ["from_a_newer_cloud"]
    with pytest.raises(ConfigError, match="budget must be in"):
        settings_from_wire({"budget": "7"})
    with pytest.raises(ConfigError, match="not a TOML value"):
        settings_from_wire({"budget": "seven"})


def test_every_setting_is_documented_and_the_reference_page_is_current():
    from dataclasses import fields, is_dataclass

    def walk(cls):
        docs = attribute_docs(cls)
        for spec in fields(cls):
            if spec.metadata.get("internal"):
                continue
            assert docs.get(spec.name), f"{cls.__name__}.{spec.name} has no Attributes: entry"
            default = spec.default_factory() if callable(spec.default_factory) else spec.default
            if is_dataclass(default):
                walk(type(default))

    walk(ProjectConfig)
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == reference_markdown(), (
        "regenerate: cdca config reference --out docs/configuration.md"
    )
