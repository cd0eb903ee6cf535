"""The viewer's metadata panel (``static/metadata.js``) in Debian's Chromium, fed each role's view.

Each role's view is made by the metadata service's own engine (``ViewSet`` under the shipped
policy) from the synthetic OR context, wrapped in the edge's DataChannel envelope, and shown in a
:class:`MetadataPanel` on a test page served by the viewer itself. Screenshots go to
``artifacts/metadata-<role>.png``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from orstream.common.health import HttpServer
from orstream.common.messages import RoleMeta
from orstream.common.policy import Policy
from orstream.common.samples import IDENTIFYING, PATIENT_ID, or_context
from orstream.metadata.pseudonyms import Pseudonyms
from orstream.metadata.views import ViewSet
from orstream.signaling.metadata import envelope
from orstream.viewer.service import ViewerService
from orstream.viewer.settings import ViewerSettings

pytestmark = [pytest.mark.integration, pytest.mark.browser]

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
KEY = b"metadata-panel-test-key-0123456789"
ROLES = ("surgeon", "expert", "student", "ops")
TEST_PAGE = "/__metadata-panel-test__.html"
PICTURE_SIZE = "1920 \u00d7 1080"  # columns x rows, with a multiplication sign
# A stand-in for the app's stylesheet: the page looks like the viewer's dark side panel.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Metadata panel</title>
<style>
:root { color-scheme: dark; font-family: system-ui, sans-serif; font-size: 15px;
  background: #0e0f10; color: #e8e8e8; }
body { margin: 0; padding: 1rem; }
aside { width: 24rem; display: flex; flex-direction: column; gap: .8rem; }
.md-card { background: #1a1c1e; border: 1px solid #2c2f33; border-radius: .4rem; padding: .6rem .8rem; }
.md-caption { margin: 0 0 .4rem; font-size: .8rem; opacity: .9; }
.md-view { padding: .05rem .5rem; border-radius: 1rem; background: #444; font-weight: 600; }
.md-view-identified { background: #8f2323; }
.md-view-deidentified { background: #1f5690; }
.md-view-technical { background: #3d5a2a; }
.md-origin { opacity: .7; }
.md-section-title { font-size: .75rem; text-transform: uppercase; letter-spacing: .08em;
  color: #4aa3ff; margin: .6rem 0 .2rem; }
.md-rows { display: grid; grid-template-columns: 9.5rem 1fr; gap: .1rem .8rem; margin: 0; }
.md-row { display: contents; }
.md-label { opacity: .65; }
.md-value { margin: 0; overflow-wrap: anywhere; }
.md-section-patient .md-value { font-weight: 600; }
.md-details { margin-top: .6rem; font-size: .8rem; opacity: .8; }
.md-details-summary { cursor: pointer; }
</style></head>
<body><aside id="panel" aria-label="Patient context"></aside>
<script type="module">
import { MetadataPanel, describe } from "/metadata.js";
const response = await fetch("/dicom-dictionary.json");
const dictionary = response.ok ? await response.json() : {};
const panel = new MetadataPanel(document.getElementById("panel"), dictionary);
window.md = { MetadataPanel, describe, dictionary, panel };
document.body.dataset.ready = "1";
</script></body></html>
"""
# The panel's text, visible and collapsed alike; and what a sighted reader sees.
ALL_TEXT = "document.getElementById('panel').textContent"
VISIBLE_TEXT = "document.getElementById('panel').innerText"


@pytest.fixture(scope="module")
def viewer_url() -> Iterator[str]:
    """The viewer's static server (uvicorn on a free loopback port, in a thread of its own)."""
    server = HttpServer(ViewerService(ViewerSettings()).app(), "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="viewer", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield f"http://127.0.0.1:{server.port}"
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture
def page(browser: Any, viewer_url: str) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 460, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.route(
        f"{viewer_url}{TEST_PAGE}",
        lambda route: route.fulfill(status=200, content_type="text/html", body=PAGE),
    )
    try:
        page.goto(f"{viewer_url}{TEST_PAGE}")
        page.wait_for_selector("body[data-ready='1']", timeout=10_000)
        yield page
        assert not errors, errors
    finally:
        page.close()


@pytest.fixture(scope="module")
def views() -> ViewSet:
    return ViewSet(Policy.load(), Pseudonyms(KEY))


def role_datasets(views: ViewSet, ds: Dataset) -> dict[str, tuple[str, bytes]]:
    """Each role's (view name, DICOM JSON) of ``ds``, as the metadata service renders them."""
    out: dict[str, tuple[str, bytes]] = {}
    for rendered in views.render(ds):
        assert rendered.payload is not None, (rendered.role, rendered.error)
        out[rendered.role] = (rendered.view, rendered.payload)
    return out


def message(view: str, payload: bytes, stream: str = "main", source: str = "rtv") -> str:
    """The text the edge sends on the ``metadata`` DataChannel."""
    now = time.time_ns()
    meta = RoleMeta(source=source, stream=stream, capture_ns=now, published_ns=now, view=view)
    return envelope("or1", meta, payload)


def show(page: Any, text: str) -> bool:
    return bool(page.evaluate("m => window.md.panel.show(m)", text))


def sections(page: Any) -> list[dict[str, Any]]:
    """The rendered sections: heading, rows (label, value) and whether they are collapsed."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('#panel .md-card:not([hidden]) > section,'
                                                  + ' #panel .md-card:not([hidden]) > details')]
              .map(s => ({
                title: (s.querySelector(':scope > h3, :scope > summary') || {}).textContent,
                collapsed: s.tagName === 'DETAILS' && !s.open,
                rows: [...s.querySelectorAll('dl > div')].map(r => [
                  r.querySelector('dt').textContent, r.querySelector('dd').textContent]),
              }))"""
        )
    )


def rows(page: Any) -> dict[str, str]:
    return {label: value for s in sections(page) for label, value in s["rows"]}


def screenshot(page: Any, role: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"metadata-{role}.png"), full_page=True)


def assert_no_empty_rows_or_sections(page: Any) -> None:
    found = sections(page)
    assert found, "nothing rendered"
    for section in found:
        assert section["title"], section
        assert section["rows"], f"empty section {section['title']!r}"
        for label, value in section["rows"]:
            assert label.strip() and value.strip(), (section["title"], label, value)


@pytest.mark.parametrize("role", ["surgeon", "expert"])
def test_identified_view_shows_the_patient_and_the_procedure(
    page: Any, views: ViewSet, role: str
) -> None:
    view, payload = role_datasets(views, or_context(frame=7))[role]
    assert view == "identified"
    assert show(page, message(view, payload))
    found = sections(page)
    assert [s["title"] for s in found] == [
        "Patient",
        "Procedure",
        "Equipment",
        "Institution",
        "Stream",
        "Other",
        "Identifiers",
    ]
    patient = dict(found[0]["rows"])
    assert patient["Name"] == "Rivera, Maria Elena"
    assert patient["ID"] == PATIENT_ID
    assert patient["Birth date"] == "1964-03-12"
    assert patient["Sex"] == "Female"
    assert patient["Age"] == "62 years"
    assert patient["Height"] == "1.68 m"
    assert patient["Weight"] == "71.5 kg"
    procedure = dict(found[1]["rows"])
    assert procedure["Study"] == "Laparoscopic cholecystectomy"
    assert procedure["Requested procedure"] == "Cholecystectomy, laparoscopic"
    assert procedure["Accession number"] == "ACC-2026-118842"
    assert procedure["Study date"] == "2026-11-21 08:15:00"
    assert procedure["Performing physician"] == "Lindqvist, Astrid"
    assert procedure["Operators"] == "Tanaka, Hiro"
    assert dict(found[3]["rows"])["Name"] == "St. Elsewhere Hospital"
    stream = dict(found[4]["rows"])
    assert stream["Picture size"] == PICTURE_SIZE
    assert stream["Frame number"] == "7"
    assert stream["Frame time"] == "2026-11-21 08:15:02"
    assert stream["Modality"] == "Endoscopy (ES)"
    assert stream["SOP class"] == "Video Endoscopic Image Real-Time Communication"
    assert found[-1]["collapsed"], "the UIDs are not in the clinician's face"
    visible = page.evaluate(VISIBLE_TEXT)
    assert "1.2.826.0.1.3680043.8.498.1.2" not in visible
    assert "1.2.826.0.1.3680043.8.498.1.2" in page.evaluate(ALL_TEXT)
    assert page.inner_text("#panel .md-view") == "Identified"
    assert page.locator("#panel .md-view-identified").count() == 1
    assert_no_empty_rows_or_sections(page)
    screenshot(page, role)


def test_student_view_shows_what_the_profile_kept_and_nothing_identifying(
    page: Any, views: ViewSet
) -> None:
    view, payload = role_datasets(views, or_context(frame=7))["student"]
    assert view.startswith("basic")
    assert show(page, message(view, payload))
    assert page.inner_text("#panel .md-view") == f"De-identified ({view})"
    everything = page.evaluate(ALL_TEXT)
    for value in IDENTIFYING:
        assert value not in everything, f"{value!r} reached the student's panel"
    visible = page.evaluate(VISIBLE_TEXT)
    for placeholder in ("ANONYMOUS", "removed", "REMOVED", "—", "1900", "undefined", "null"):
        assert placeholder not in visible, f"{placeholder!r} shown to the student"
    assert_no_empty_rows_or_sections(page)
    found = sections(page)
    titles = [s["title"] for s in found]
    assert titles[0] == "Patient" and "Institution" not in titles
    patient = dict(found[0]["rows"])
    assert patient["ID"].startswith("ORS-")
    assert "Name" not in patient and "Birth date" not in patient
    # Whatever the profile kept of the patient's characteristics is shown, and nothing else.
    dataset = json.loads(payload)
    for tag, label in (("00100040", "Sex"), ("00101010", "Age"), ("00101020", "Height")):
        kept = bool(dataset.get(tag, {}).get("Value"))
        assert (label in patient) == kept, (label, dataset.get(tag))
    procedure = dict(found[titles.index("Procedure")]["rows"])
    assert procedure["Study"] == "Laparoscopic cholecystectomy"
    assert "Accession number" not in procedure and "Operators" not in procedure
    equipment = dict(found[titles.index("Equipment")]["rows"])
    assert equipment["Manufacturer"] == "Endoscopy Co"
    assert "Station" not in equipment, "a dummy value is not a value"
    stream = dict(found[titles.index("Stream")]["rows"])
    assert stream["Frame number"] == "7"
    assert "Frame time" not in stream, "the dummy date of a de-identified view is not shown"
    assert found[-1]["title"] == "Identifiers" and found[-1]["collapsed"]
    screenshot(page, "student")


def test_technical_view_has_no_patient_only_equipment_and_stream(page: Any, views: ViewSet) -> None:
    view, payload = role_datasets(views, or_context(frame=7))["ops"]
    assert view == "technical"
    assert show(page, message(view, payload))
    assert page.inner_text("#panel .md-view") == "Technical"
    assert page.locator("#panel .md-section-patient").count() == 0
    assert page.locator("#panel .md-section-procedure").count() == 0
    found = sections(page)
    titles = [s["title"] for s in found]
    assert "Patient" not in titles and "Procedure" not in titles and "Institution" not in titles
    equipment = dict(found[titles.index("Equipment")]["rows"])
    assert equipment == {
        "Manufacturer": "Endoscopy Co",
        "Model": "Tower 4K",
        "Station": "OR1-TOWER",
        "Serial number": "TWR-4K-0192",
        "Software": "4.2.1",
    }
    assert dict(found[titles.index("Stream")]["rows"])["Picture size"] == PICTURE_SIZE
    everything = page.evaluate(ALL_TEXT)
    for value in IDENTIFYING:
        assert value not in everything, f"{value!r} reached the technical panel"
    assert_no_empty_rows_or_sections(page)
    screenshot(page, "ops")


def test_a_hostile_value_is_text(page: Any, views: ViewSet) -> None:
    ds = or_context()
    ds.StudyDescription = "<script>window.pwned=2</script>"
    ds.InstitutionName = '"><svg onload=window.pwned=3>'
    view, payload = role_datasets(views, ds)["surgeon"]
    # A PN value cannot hold "=" (it separates the representations): put it in the JSON itself.
    dataset = json.loads(payload)
    dataset["00100010"]["Value"] = [{"Alphabetic": "<img src=x onerror=window.pwned=1>^Maria"}]
    assert show(page, message(view, json.dumps(dataset).encode()))
    found = {s["title"]: dict(s["rows"]) for s in sections(page)}
    assert found["Patient"]["Name"] == "<img src=x onerror=window.pwned=1>, Maria"
    assert found["Procedure"]["Study"] == "<script>window.pwned=2</script>"
    assert found["Institution"]["Name"] == '"><svg onload=window.pwned=3>'
    page.wait_for_timeout(200)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#panel img, #panel script, #panel svg").count() == 0


def test_formats_and_what_is_never_rendered(page: Any) -> None:
    dataset = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane^^Dr^PhD"}]},
        "00100030": {"vr": "DA", "Value": ["20261121"]},
        "00100040": {"vr": "CS", "Value": ["O"]},
        "00101010": {"vr": "AS", "Value": ["001Y"]},
        "00101020": {"vr": "DS", "Value": [""]},
        "00101030": {"vr": "DS"},
        "00102160": {"vr": "SH", "Value": [None]},
        "00081050": {"vr": "PN", "Value": [{"Alphabetic": "Smith^Ann"}, {"Alphabetic": "Lee"}]},
        "00081070": {"vr": "PN", "Value": [{}]},
        "00080030": {"vr": "TM", "Value": ["0815"]},
        "00181020": {"vr": "LO", "Value": ["4.2", "build 7"]},
        "00404001": {"vr": "CS", "Value": ["IN PROGRESS"]},
        "00081110": {"vr": "SQ", "Value": [{"00081150": {"vr": "UI", "Value": ["1.2.3"]}}, {}]},
        "00081120": {"vr": "SQ", "Value": [{}]},
        "00080082": {
            "vr": "SQ",
            "Value": [{"00080104": {"vr": "LO", "Value": ["Main campus"]}}],
        },
        "00181063": {"vr": "DS", "Value": [20]},
        "00189074": {"vr": "DT", "Value": ["20261121081502.25+0100"]},
        "00091010": {"vr": "LO", "Value": ["private value"]},
        "00282110": {"vr": "CS", "Value": ["01"]},
        "00420011": {"vr": "OB", "InlineBinary": "SGVsbG8="},
        "7FE00010": {"vr": "OB", "BulkDataURI": "http://example/bulk"},
        "00104000": {"vr": "LT", "Value": ["ANONYMOUS"]},
        "constructor": {"vr": "LO", "Value": ["not a tag"]},
    }
    described = page.evaluate("d => window.md.describe(d, window.md.dictionary)", dataset)
    flat = {row["label"]: row["value"] for s in described for row in s["rows"]}
    assert [s["id"] for s in described] == [
        "patient",
        "procedure",
        "equipment",
        "institution",
        "stream",
        "other",
    ]
    assert flat["Name"] == "Doe, Dr Jane, PhD"
    assert flat["Birth date"] == "2026-11-21"
    assert flat["Sex"] == "Other"
    assert flat["Age"] == "1 year"
    assert flat["Performing physician"] == "Smith, Ann; Lee", "names hold commas themselves"
    assert flat["Study date"] == "08:15", "a time without its date keeps the row"
    assert flat["Software"] == "4.2, build 7"
    assert flat["Referenced Study Sequence"] == "1 item"
    assert flat["Institution code"] == "Main campus"
    assert flat["Frame interval"] == "20 ms"
    assert flat["Frame Acquisition DateTime"] == "2026-11-21 08:15:02 UTC+01:00"
    assert flat["Lossy compression"] == "Yes"
    assert flat["(0009,1010)"] == "private value"
    assert flat["Comments"] == "ANONYMOUS", "not de-identified: a value as given"
    for absent in ("Height", "Weight", "Ethnic Group", "Operators", "Referenced Patient Sequence"):
        assert absent not in flat, absent
    values = " ".join(flat.values())
    assert "SGVsbG8" not in values and "bulk" not in values and "not a tag" not in values
    assert "Hello" not in values
    # Without a dictionary the tags stand for the names.
    bare = page.evaluate("d => window.md.describe(d, {})", dataset)
    labels = {row["label"] for s in bare for row in s["rows"]}
    assert {"(0040,4001)", "(0008,1110)", "Name", "Study date"} <= labels
    # A de-identified dataset's dummy values are no values.
    deidentified = dataset | {"00120062": {"vr": "CS", "Value": ["YES"]}}
    deidentified["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": "ANONYMOUS"}]}
    deidentified["00100030"] = {"vr": "DA", "Value": ["19000101"]}
    deidentified["00080030"] = {"vr": "TM", "Value": ["000000"]}
    described = page.evaluate("d => window.md.describe(d, window.md.dictionary)", deidentified)
    flat = {row["label"]: row["value"] for s in described for row in s["rows"]}
    for absent in ("Name", "Birth date", "Study date", "Comments"):
        assert absent not in flat, absent
    assert flat["Sex"] == "Other"


def test_one_card_per_stream_newest_first_updated_in_place_and_throttled(
    page: Any, views: ViewSet
) -> None:
    payloads = {f: role_datasets(views, or_context(frame=f))["surgeon"] for f in range(60)}
    view = payloads[0][0]
    assert show(page, message(view, payloads[0][1], stream="main"))
    assert not show(page, message(view, payloads[0][1], stream="main")), "same dataset: no work"
    page.wait_for_timeout(300)
    assert show(page, message(view, payloads[0][1], stream="room-camera"))
    streams = page.evaluate(
        "[...document.querySelectorAll('#panel .md-card')].map(c => c.dataset.stream)"
    )
    assert streams == ["room-camera", "main"], "the newest context on top"
    assert page.locator("#panel .md-card").first.locator(".md-origin").inner_text() == (
        "room-camera · DICOM-RTV"
    )
    page.wait_for_timeout(300)
    # The UIDs opened by the reader stay open while frames come in; rows update in place.
    page.locator("#panel .md-card[data-stream='main'] summary").click()
    page.evaluate(
        """() => {
        const card = document.querySelector("#panel .md-card[data-stream='main']");
        window.nameCell = [...card.querySelectorAll('dd')].find(d => d.textContent.startsWith('Rivera'));
        window.mutations = 0;
        new MutationObserver(() => { window.mutations += 1; })
          .observe(document.getElementById('panel'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    main = "#panel .md-card[data-stream='main']"
    frame = (
        f'document.querySelector("{main} .md-section-stream .md-row:nth-child(2) dd").textContent'
    )
    burst = [message(view, payloads[f][1], stream="main") for f in range(1, 60)]
    shown = page.evaluate(
        f"ms => {{ ms.forEach(m => window.md.panel.show(m)); return {frame}; }}", burst
    )
    # The first of the burst is drawn at once (none for 300 ms), the rest wait their turn.
    assert shown == "1"
    page.wait_for_function(f"{frame} === '59'", timeout=2_000)
    assert page.evaluate("window.mutations") <= 2, "59 datasets in a burst: at most two redraws"
    card = page.locator(main)
    assert card.locator("details").evaluate("d => d.open")
    assert page.evaluate(
        f'[...document.querySelectorAll("{main} dd")].includes(window.nameCell)'
    ), "the rows were updated in place, not rebuilt"
    page.evaluate("() => window.md.panel.clear()")
    assert page.evaluate("document.getElementById('panel').childElementCount") == 0
    assert show(page, message(view, payloads[5][1], stream="main")), "after clear, anew"
    assert rows(page)["Frame number"] == "5"


def test_a_message_as_an_object_and_malformed_ones(page: Any, views: ViewSet) -> None:
    view, payload = role_datasets(views, or_context())["student"]
    parsed = json.loads(message(view, payload))
    assert page.evaluate("m => window.md.panel.show(m)", parsed)
    for bad in ("not json", "{}", '{"type": "stats", "dataset": {}}', '{"dataset": [1]}'):
        assert not show(page, bad), bad
    assert page.locator("#panel .md-card").count() == 1


def test_a_context_with_nothing_to_show_and_many_streams(page: Any, views: ViewSet) -> None:
    view, payload = role_datasets(views, or_context())["ops"]
    empty = {"00100010": {"vr": "PN"}, "00100020": {"vr": "LO", "Value": [""]}}
    assert show(page, message(view, json.dumps(empty).encode(), stream="blank"))
    assert page.locator("#panel .md-card[data-stream='blank']").is_hidden()
    assert page.evaluate(VISIBLE_TEXT).strip() == ""
    for n in range(20):
        page.evaluate("m => window.md.panel.show(m)", message(view, payload, stream=f"cam{n}"))
    # Drawn together, within a quarter of a second of the first.
    page.wait_for_function(
        "document.querySelectorAll('#panel .md-card').length === 16", timeout=2_000
    )
    streams = page.evaluate(
        "[...document.querySelectorAll('#panel .md-card')].map(c => c.dataset.stream)"
    )
    assert streams == [f"cam{n}" for n in range(19, 3, -1)], "the 16 newest contexts"
