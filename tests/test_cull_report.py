"""The cull report in headless Chromium, opened from files with every network request refused.

Needs Debian's ``chromium`` (``.ci/install-browser.sh``) and ``playwright``; skips cleanly without
them. The screenshot goes to ``$BEHOLDER_TEST_ARTIFACTS`` (default: the test's tmp_path).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from beholder.cli import main
from cull_helpers import make_shoot

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_report_reads_offline_from_files(idealo_weights, browser, tmp_path):
    artifacts = Path(os.environ.get("BEHOLDER_TEST_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    shoot = make_shoot(tmp_path / "shoot", bursts=3, frames=4, singles=3, seed=2)
    (tmp_path / "shoot" / "notes.jpg").write_text("not a photo")
    code = main(
        [
            "cull",
            str(tmp_path / "shoot"),
            "--out",
            str(tmp_path / "report"),
            "--model",
            "nima-mobilenet-idealo",
        ]
    )
    assert code == 1  # notes.jpg is listed as unreadable

    page = browser.new_page(viewport={"width": 1100, "height": 800})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    # No network: anything that is not a local file is refused (and would be listed below).
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort()
    )
    page.goto((tmp_path / "report" / "index.html").as_uri())
    page.wait_for_load_state("load")

    groups = page.locator("section.group:not(.failures)")
    assert groups.count() == 6
    assert sorted(int(groups.nth(i).get_attribute("data-size")) for i in range(6)) == [1, 1, 1, 4, 4, 4]
    for i in range(6):
        cards = groups.nth(i).locator(".card")
        picks = groups.nth(i).locator(".card.pick")
        assert picks.count() == 1
        means = [float(cards.nth(k).get_attribute("data-mean")) for k in range(cards.count())]
        assert float(picks.first.get_attribute("data-mean")) == max(means)
    cards = page.locator("section.group:not(.failures) .card")
    assert cards.count() == len(shoot.paths)
    for k in range(cards.count()):
        card = cards.nth(k)
        assert card.locator("svg.chart rect.bar").count() == 10
        card.scroll_into_view_if_needed()  # thumbnails load lazily, as they come into view
        assert card.locator("img").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
        assert 1 <= int(card.get_attribute("data-stars")) <= 5
    failed = page.locator("section.failures .card.error")
    assert failed.count() == 1 and "notes.jpg" in failed.inner_text()
    assert "15 photos in 6 groups, 6 picks, 1 could not be read" in page.locator("#summary").inner_text()

    screenshot = artifacts / "cull-report.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    assert [u for u in requests if not u.startswith("file:")] == []
