"""The playground in a real headless Chromium (Debian's ``chromium``, driven by Playwright with
``executable_path``: no browser download), against the standalone app under uvicorn on
127.0.0.1. Skipped only when no Chromium binary is installed (``.ci/run`` installs it).

The local provider waits on a gate the test opens, so the stream's pings are seen before the
images without depending on the machine's speed.
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from PIL import Image
from playwright.sync_api import ConsoleMessage, FilePayload, Page, expect, sync_playwright

from mesh_images_asgi import GenerationJob, ImagesApp, PartialSink, ProviderResult, Settings
from mesh_images_asgi._access.keys import hash_key, new_key
from mesh_images_asgi.providers.local import LocalProvider
from tests.support.leaks import WATCH
from tests.support.live import serve

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary (apt-get install -y chromium chromium-driver)"
)
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
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "playground.png"
WAIT_MS = 30_000  # only catches hangs
KEY = WATCH.secret(new_key())


class GatedLocal(LocalProvider):
    """The local renderer, held until the test opens ``gate`` (pings go out meanwhile)."""

    def __init__(self) -> None:
        super().__init__(latency=0)
        self.gate = threading.Event()
        self.gate.set()
        self.jobs: list[GenerationJob] = []

    async def generate(
        self, job: GenerationJob, on_partial: PartialSink | None = None
    ) -> ProviderResult:
        self.jobs.append(job)
        opened = await anyio.to_thread.run_sync(self.gate.wait, WAIT_MS / 1000)
        assert opened, "the test never opened the gate"
        return await super().generate(job, on_partial)


class Browser:
    """A page of a fresh Chromium profile, with the console errors it logged."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.set_default_timeout(WAIT_MS)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def open(self, base: str) -> Page:
        self.page.goto(base + "/")
        expect(self.page.locator("#model")).to_be_enabled()
        return self.page


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 900, "height": 1400},
        )
        try:
            yield Browser(context.pages[0] if context.pages else context.new_page())
        finally:
            context.close()


def _app(provider: GatedLocal, **settings: object) -> ImagesApp:
    """The standalone app's page and routes, with the gated renderer as ``local``."""
    base = Settings.model_validate({"keepalive_interval": 0.05, **settings})
    return ImagesApp(base, providers={"local": provider}, playground=True)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def _pixels(data_url: str) -> Image.Image:
    header, b64 = data_url.split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGBA")


def test_a_streamed_generation_shows_pings_partials_headers_and_the_final_images(
    browser: Browser,
) -> None:
    provider = GatedLocal()
    provider.gate.clear()
    with serve(_app(provider)) as base:
        page = browser.open(base)
        expect(page.locator("#model option[value='local/sketch']")).to_have_count(1)
        expect(page.locator("#model")).to_have_value("local/sketch")
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll("input, select, textarea")]
                .filter((control) => control.labels.length === 0).map((control) => control.id)"""
        )
        assert unlabelled == []
        page.select_option("#size", "256x256")
        page.fill("#n", "12")  # past the model's max_n (10): clamped, never sent
        page.locator("#n").blur()
        expect(page.locator("#n")).to_have_value("10")
        page.fill("#n", "2")
        page.fill("#prompt", "a lighthouse at dusk")
        page.click("#go")
        expect(page.locator("#state")).to_have_text("Processing on local/sketch…")
        expect(page.locator("#pings")).not_to_have_text("0")  # pings counted while held
        provider.gate.set()
        images = page.locator("#images img")
        expect(images).to_have_count(2)
        expect(page.locator("#state")).to_have_text("Done: 2 image(s) from local/sketch.")
        expect(page.locator("#partials img")).to_have_count(2)  # the form's default
        for index in range(2):
            expect(images.nth(index)).to_have_js_property("naturalWidth", 256)
            expect(images.nth(index)).to_have_js_property("naturalHeight", 256)
        # The browser decoded the very image that was sent: its pixels, read from a canvas.
        src = images.nth(0).get_attribute("src")
        assert src is not None
        drawn = page.evaluate(
            """(img) => {
                const canvas = document.createElement("canvas");
                canvas.width = img.naturalWidth;
                canvas.height = img.naturalHeight;
                const ctx = canvas.getContext("2d");
                ctx.drawImage(img, 0, 0);
                return Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data);
            }""",
            images.nth(0).element_handle(),
        )
        assert bytes(drawn) == _pixels(src).tobytes()
        shown = page.locator("#headers").inner_text()
        assert "x-request-id" in shown
        assert "x-mesh-routing-model\nlocal/sketch" in shown
        assert "usage.cost_usd\n0" in shown
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.set_viewport_size({"width": 375, "height": 800})  # a phone: nothing to scroll sideways
        widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] == 375
    assert browser.errors == []


def test_a_refused_request_shows_the_error_envelope_with_its_request_id(
    browser: Browser,
) -> None:
    keys = [{"hash": hash_key(KEY), "label": "tester", "max_n": 1}]
    with serve(_app(GatedLocal(), api_keys=keys)) as base:
        page = browser.page
        page.goto(base + "/")
        error = page.locator("#error")
        expect(error).to_contain_text("401 unauthorized")
        expect(error).to_contain_text("Enter a gateway key above")
        page.fill("#key", KEY)
        page.click("#use-key")
        expect(page.locator("#model")).to_have_value("local/sketch")
        expect(error).to_be_hidden()
        page.select_option("#size", "256x256")
        page.fill("#n", "2")  # the model takes 10; this key at most 1
        page.click("#go")
        expect(error).to_contain_text("400 invalid_request")
        expect(error).to_contain_text("at most 1 image(s) per request")
        expect(error).to_contain_text("Field: n")
        expect(page.locator("#state")).to_have_text("Refused.")
        request_id = page.locator("#headers dt:text-is('x-request-id') + dd").inner_text()
        assert request_id.startswith("req_")
        expect(error.locator(".request-id")).to_have_text(f"Request id: {request_id}")
        page.fill("#n", "1")
        page.uncheck("#stream")  # a JSON answer: the cost and routing come as headers
        page.click("#go")
        expect(page.locator("#images img")).to_have_count(1)
        expect(error).to_be_hidden()
        shown = page.locator("#headers").inner_text()
        assert "x-mesh-cost-usd\n0" in shown
        assert "x-mesh-routing-attempts\n1" in shown
        key_in_page = page.evaluate("() => [localStorage.length, sessionStorage.length]")
        assert key_in_page == [0, 0]  # the key lives in page memory only
        assert KEY not in page.url


def test_an_edit_with_a_painted_mask_is_sent_to_the_edits_route(browser: Browser) -> None:
    provider = GatedLocal()
    with serve(_app(provider)) as base:
        page = browser.open(base)
        expect(page.locator("#model-info")).to_contain_text("edits with a mask")
        picture: FilePayload = {
            "name": "lake.png",
            "mimeType": "image/png",
            "buffer": _png(128, 96),
        }
        page.set_input_files("#image", files=[picture])
        mask = page.locator("#mask")
        expect(mask).to_be_visible()
        expect(page.locator("#go")).to_have_text("Edit")
        expect(page.locator("#size")).to_have_value("")  # the image's own size
        mask.scroll_into_view_if_needed()  # the mouse works in the viewport
        box = mask.bounding_box()
        assert box is not None
        # A stroke across the middle of the left half: image pixels x 16-48 around y 48.
        page.mouse.move(box["x"] + box["width"] * 0.125, box["y"] + box["height"] * 0.5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.375, box["y"] + box["height"] * 0.5, steps=8)
        page.mouse.up()
        page.fill("#prompt", "the lake at night")
        page.click("#go")
        images = page.locator("#images img")
        expect(images).to_have_count(1)
        expect(images.nth(0)).to_have_js_property("naturalWidth", 128)
        expect(images.nth(0)).to_have_js_property("naturalHeight", 96)
        expect(page.locator("#headers")).to_contain_text("x-request-id")
    (job,) = provider.jobs
    assert job.kind == "edit"
    assert job.inputs is not None
    assert job.request.prompt == "the lake at night"
    assert job.inputs.first.size == "128x96"
    assert job.inputs.first.data == picture["buffer"]  # the file itself, byte for byte
    assert job.inputs.mask is not None
    sent = Image.open(io.BytesIO(job.inputs.mask.data)).convert("RGBA")
    assert sent.size == (128, 96)
    alpha = sent.getchannel("A")
    assert alpha.getpixel((32, 48)) == 0  # painted: may change
    assert alpha.getpixel((100, 10)) == 255  # not painted: kept
    assert browser.errors == []
