"""The page at / in headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import shutil

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import write_mp4
from tests.service.serving import CAPTIONS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def media_dir(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    for i in range(len(CAPTIONS)):
        write_mp4(folder / f"vid{i:03d}.mp4", frames=16, size=32, seed=i)  # 2 s: every indexed time (0-1.5 s) within
    return folder


def test_the_page_finds_results_shows_frames_and_plays_the_moment(serve, media_dir, tmp_path):
    server = serve(media_dirs=[media_dir])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.fill("#query", CAPTIONS[3])
        page.fill("#top-k", "6")
        page.click("button[type=submit]")
        page.wait_for_selector(".hit")
        cards = page.locator(".hit")
        assert cards.count() == 6
        assert cards.first.get_attribute("data-video-id") == "vid003"
        assert "6 results in" in page.inner_text("#status")
        page.wait_for_function("() => [...document.querySelectorAll('.hit img')].every(i => i.complete)")
        widths = page.eval_on_selector_all(".hit img", "imgs => imgs.map(i => i.naturalWidth)")
        assert all(w > 0 for w in widths), widths  # every best frame decoded and served as a JPEG
        page.screenshot(path=str(tmp_path / "results.png"))
        cards.first.click()
        video = page.wait_for_selector(".hit video")
        first = page.evaluate(
            "q => fetch('search', {method: 'POST', headers: {'Content-Type': 'application/json'},"
            " body: JSON.stringify({query: q, top_k: 1})}).then(r => r.json()).then(b => b.results[0])",
            CAPTIONS[3],
        )
        assert first["start_s"] <= first["best_time_s"] < first["end_s"]
        # the player gets the moment's span as a media fragment
        span = ",".join(
            str(int(x)) if x == int(x) else repr(x) for x in (first["start_s"], first["end_s"])
        )  # as JS prints
        assert video.get_attribute("src") == f"videos/vid003/file#t={span}"
        page.wait_for_function("() => document.querySelector('.hit video').readyState >= 1")  # the mp4 loads
        # the keyboard alone: Tab from the search box to a result, Enter plays its moment
        page.fill("#query", CAPTIONS[5])
        page.press("#query", "Enter")
        page.wait_for_function("() => document.querySelector('.hit')?.dataset.videoId === 'vid005'")
        page.focus("#top-k")
        page.keyboard.press("Tab")  # the Search button
        page.keyboard.press("Tab")  # the first result
        assert page.evaluate("document.activeElement.dataset.videoId") == "vid005"
        page.keyboard.press("Enter")
        page.wait_for_selector(".hit[data-video-id=vid005] video")
        # the tag box filters on metadata; a title from metadata names the card
        for video_id, meta in (("vid007", {"title": "Seven", "tags": ["demo"]}), ("vid009", {"tags": ["demo", "x"]})):
            assert httpx.patch(f"{server.url}/videos/{video_id}", json=meta).status_code == 200
        page.fill("#tag", "demo")
        page.fill("#query", CAPTIONS[3])
        page.press("#query", "Enter")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('2 results')")
        assert sorted(page.eval_on_selector_all(".hit", "cs => cs.map(c => c.dataset.videoId)")) == ["vid007", "vid009"]
        assert page.inner_text(".hit[data-video-id=vid007] .id") == "Seven"
        assert page.inner_text(".hit[data-video-id=vid009] .id") == "vid009"
        page.fill("#tag", "")
        # a failed search clears the results it would otherwise seem to have
        page.fill("#query", "   ")
        page.click("button[type=submit]")
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('error 422')")
        assert page.locator(".hit").count() == 0
        browser.close()
