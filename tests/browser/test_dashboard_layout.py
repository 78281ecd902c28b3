"""The operator dashboard's wide tables at a laptop's 1280 px and at a phone's 390 px: nothing is
wider than the page; on a phone each wide table scrolls inside its own box, and at 1280 px the
margin table fits without scrolling."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Browser, Page, ViewportSize

from tests.browser.conftest import LiveGateway, screenshot, sign_in_by_keyboard
from tests.browser.test_dashboard import generate

# Elements whose right edge passes the viewport's, ignoring those clipped by a scroll box
# (a table inside `.scroll` may be wider than the page: the box scrolls, the page does not).
OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('.scroll') && !el.classList.contains('scroll')) continue;
    const box = el.getBoundingClientRect();
    // The skip link waits far off to the left until focused: beside the page, not wider than it.
    if (box.width > 0 && box.right > 0 && box.right > width + 0.5) {
      out.push(`${el.tagName.toLowerCase()}.${el.className} ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  return {page: document.documentElement.scrollWidth, width, out};
}"""

# Per scroll box: its table's width against the box's, and whether the caption's text (which
# scrolls with the table) is wholly visible before any scrolling.
SCROLL_BOXES = """() => [...document.querySelectorAll('.scroll')].map(box => {
  const caption = box.querySelector('caption');
  let captionVisible = true;
  if (caption) {
    const text = document.createRange();
    text.selectNodeContents(caption);
    captionVisible = text.getBoundingClientRect().right <= box.getBoundingClientRect().right + 0.5;
  }
  return {table: box.querySelector('table')?.className, inner: box.scrollWidth, outer: box.clientWidth,
          overflowX: getComputedStyle(box).overflowX, captionVisible};
})"""


async def operator_page(gw: LiveGateway, browser: Browser, viewport: ViewportSize, **options: Any) -> Page:
    context = await browser.new_context(viewport=viewport, **options)
    page = await context.new_page()
    await sign_in_by_keyboard(page, gw.base_url, gw.operator_key)
    assert page.url == f"{gw.base_url}/dashboard/admin"
    return page


@pytest.fixture
async def with_usage(live_gateway: LiveGateway) -> LiveGateway:
    """A gateway whose margin table has rows (jobs on two engines), long names included."""
    _, key = await live_gateway.tenant("Initech Worldwide Holdings International", credits=50)
    await generate(live_gateway, key)
    live_gateway.fakes["a2c"].fail_with_status(500)
    await generate(live_gateway, key)  # falls back to qolaba
    live_gateway.fakes["a2c"].reset()
    return live_gateway


async def test_the_operator_page_fits_1280_px_with_the_margin_table_unscrolled(
    with_usage: LiveGateway, browser: Browser
) -> None:
    page = await operator_page(with_usage, browser, {"width": 1280, "height": 900})
    await screenshot(page, "operator-1280")
    layout = await page.evaluate(OVERFLOWING)
    assert layout["page"] <= layout["width"], layout
    assert layout["out"] == [], layout
    boxes = {box["table"]: box for box in await page.evaluate(SCROLL_BOXES)}
    assert boxes["margins"]["inner"] <= boxes["margins"]["outer"], boxes["margins"]
    assert await page.locator("table.margins tbody tr").count() == 2
    await page.get_by_role("link", name="Initech Worldwide Holdings International").click()
    layout = await page.evaluate(OVERFLOWING)
    assert layout["page"] <= layout["width"], layout
    assert layout["out"] == [], layout
    await screenshot(page, "operator-tenant-1280")
    await page.context.close()


async def test_on_a_phone_wide_tables_scroll_in_their_own_box_and_the_page_does_not(
    with_usage: LiveGateway, browser: Browser
) -> None:
    page = await operator_page(with_usage, browser, {"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    await screenshot(page, "operator-phone")
    layout = await page.evaluate(OVERFLOWING)
    assert layout["page"] <= layout["width"], layout
    assert layout["out"] == [], layout
    boxes = {box["table"]: box for box in await page.evaluate(SCROLL_BOXES)}
    margins = boxes["margins"]
    assert margins["inner"] > margins["outer"], margins  # wider than a phone: it scrolls, in its box
    assert margins["overflowX"] == "auto"
    assert [box["table"] for box in boxes.values() if not box["captionVisible"]] == []
    await page.get_by_role("link", name="Initech Worldwide Holdings International").click()
    layout = await page.evaluate(OVERFLOWING)
    assert layout["page"] <= layout["width"], layout
    assert layout["out"] == [], layout
    await screenshot(page, "operator-tenant-phone")
    await page.context.close()
