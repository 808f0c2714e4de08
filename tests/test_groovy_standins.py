"""The QuPath stand-ins of tests/groovy/ against QuPath itself: their API against the list checked in QuPath's source
(tests/groovy/qupath_api.txt, versions 0.4.4, 0.5.1, 0.6.0, 0.7.0), and their behaviour where the scripts depend on it
(tests/groovy/standin_checks.groovy)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from server_helpers import REPO
from test_groovy_script import harness  # noqa: F401  (a fixture: the compiled stand-ins and harness)

API_LIST = REPO / "tests" / "groovy" / "qupath_api.txt"
CHECKS = REPO / "tests" / "groovy" / "standin_checks.groovy"
VERSIONS = ["0.4.4", "0.5.1", "0.6.0", "0.7.0"]
LINE = re.compile(r"^(?P<signature>\S.*? \| .*?)  \[(?P<versions>[0-9. ]+)\](?P<note>.*)$")


def _recorded() -> dict[str, tuple[list[str], str]]:
    entries = {}
    for line in API_LIST.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = LINE.match(line)
        assert match, f"malformed line in {API_LIST.name}: {line!r}"
        entries[match["signature"]] = (match["versions"].split(), match["note"].strip())
    return entries


def _java(harness, *args, timeout=120):  # noqa: F811
    out = subprocess.run([harness["java"], "-cp", harness["classpath"], *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_api_list_is_well_formed():
    entries = _recorded()
    assert len(entries) > 150
    for signature, (versions, note) in entries.items():
        assert versions == VERSIONS, f"{signature}: not in every QuPath version 0.4-0.7 ({versions})"
        assert "deprecated" not in note, f"{signature}: deprecated in a QuPath version ({note})"


@pytest.mark.groovy
def test_standins_offer_only_api_that_qupath_04_to_07_all_have(harness):  # noqa: F811
    offered = set(_java(harness, "ApiLister", harness["classes"]).splitlines())
    recorded = _recorded()
    unchecked = sorted(offered - set(recorded))
    assert not unchecked, ("stand-in API that is not in the list checked against QuPath 0.4-0.7 (absent from a "
                           "version, deprecated in one, or never checked: check it in QuPath's source, then add it to "
                           f"{API_LIST.name}):\n" + "\n".join(unchecked))
    stale = sorted(set(recorded) - offered)
    assert not stale, f"lines of {API_LIST.name} that no stand-in offers any more:\n" + "\n".join(stale)
    # The kinds the issue of fidelity was about.
    for line in ("qupath.lib.objects.hierarchy.PathObjectHierarchy | public final class",
                 "qupath.lib.objects.PathObject | public abstract class",
                 "qupath.lib.projects.Project | public interface",
                 "qupath.lib.projects.ProjectImageEntry | public interface",
                 "qupath.lib.objects.hierarchy.PathObjectHierarchy | public void removeObjects(java.util.Collection,boolean)",
                 "qupath.lib.objects.PathObject | public java.util.Collection getChildObjects()",
                 "qupath.lib.scripting.QP | public static java.util.Collection getAnnotationObjects()",
                 "qupath.lib.gui.QuPathGUI | public javafx.collections.ObservableList getAvailablePathClasses()"):
        assert line in offered, line


@pytest.mark.groovy
def test_standins_behave_like_qupath_where_the_scripts_depend_on_it(harness):  # noqa: F811
    results = json.loads(_java(harness, "groovy.ui.GroovyMain", str(CHECKS)).strip().splitlines()[-1])
    assert results["roi_to_tree"] == "java.lang.UnsupportedOperationException"
    assert results["roi_through_string"] == {"type": "Polygon", "coordinates": [
        [[10.5, 20], [15.5, 20], [15.5, 25], [10.5, 25], [10.5, 20]]]}
    float32 = 0.10000000149011612  # 0.1 as float32
    assert results["tile_value"] == float32 and results["detection_value"] == float32
    assert results["annotation_value"] == 0.1
    assert results["kinds"] == "PathTileObject,PathDetectionObject,PathAnnotationObject"
    for case in ("class_without_colour", "null_geometry", "text_measurement", "bow_tie"):
        assert results[case] != "none", f"{case}: QuPath refuses the whole file"
    assert (results["derived_name"], results["derived_string"], results["derived_parent"]) == (
        "Positive x", "Tumor: Positive x", "Tumor")
    assert results["stroma_rgb"] == 0x96C896 and results["same_instance"]
    assert results["this_thread_sees_image"] and not results["other_thread_sees_image"]
    assert results["after_add_small_parent"] and results["after_add_tile_parent"]
    assert results["after_resolve_small_parent"] and results["after_resolve_tile_parent"]
    assert results["after_resolve_outside_parent"]
    assert results["after_remove_small_parent"] and results["after_remove_outside_parent"]
    assert results["run_later_waits"] and results["run_later_ran"]
    assert results["gui_list_off_fx_thread"] == "java.lang.IllegalStateException"
    assert results["gui_list_on_fx_thread"] == "none"
    assert results["qp_remove_objects"] == 0 and results["measurement_get_names"] == 0
