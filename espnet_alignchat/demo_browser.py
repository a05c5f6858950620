"""Drive the demo page (`espnet_alignchat.demo`) in headless Chromium, as a person would.

    with DemoPage("http://127.0.0.1:7860", microphone="question.wav") as page:
        page.upload("question.wav")
        page.wait_until_answered(1)
        print(page.answers("speech-chat"), page.heard())

The browser test, and the README's screenshot and the first-token measurement
(``benchmarks/demo_first_token.py``, ``--screenshot``) use it. It needs Selenium (the
``test`` extra) and Debian's ``chromium`` and ``chromium-driver``; Selenium never downloads
a browser or a driver here. Every host but the page's own resolves to nothing, so a page that
needed the internet would show it (`outside_requests`). The microphone is Chromium's fake
device playing a WAV file in a loop; recording needs no permission prompt.
"""

import shutil
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union
from urllib.parse import unquote, urlparse

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

# A turn is over when no output of the page shows Gradio's progress tracker.
BUSY = (
    "return Array.from(document.querySelectorAll('[data-testid=status-tracker]'))"
    ".some(tracker => !tracker.classList.contains('hide'))"
)
# Records when the last answer of a chat first shows text: the first token on screen.
WATCH_FIRST_TOKEN = """
const chat = document.getElementById(arguments[0]);
const before = chat.querySelectorAll('[data-testid=bot]').length;
window.firstToken = null;
window.turnStart = performance.now();
const observer = new MutationObserver(() => {
    const answers = chat.querySelectorAll('[data-testid=bot]');
    if (answers.length > before && answers[answers.length - 1].innerText.trim()) {
        window.firstToken = performance.now();
        observer.disconnect();
    }
});
observer.observe(chat, {subtree: true, childList: true, characterData: true});
"""


def chromium_missing() -> Optional[str]:
    """Why Chromium cannot be driven here, or None."""
    for program, package in (
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
    ):
        if shutil.which(program) is None:
            return f"no {program} (apt-get install {package})"
    return None


class DemoPage:
    """The demo page in a headless Chromium window of `size` pixels; `microphone`: the WAV
    file the fake microphone plays."""

    def __init__(
        self,
        url: str,
        microphone: Union[str, Path, None] = None,
        size: Tuple[int, int] = (1500, 1000),
    ):
        self.url = url
        host = urlparse(url).hostname
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for argument in (
            "--headless=new",
            "--no-sandbox",  # root in containers and CI
            "--disable-dev-shm-usage",  # small /dev/shm in containers
            f"--window-size={size[0]},{size[1]}",
            f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
        ):
            options.add_argument(argument)
        if microphone is not None:
            options.add_argument(f"--use-file-for-fake-audio-capture={microphone}")
        service = Service(shutil.which("chromedriver"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.implicitly_wait(10)

    def __enter__(self) -> "DemoPage":
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()

    # -- what a person does ------------------------------------------------------------------
    def open(self) -> None:
        self.driver.get(self.url)
        self.driver.find_element(By.CSS_SELECTOR, "#speech-input")
        self.wait(lambda: not self.busy(), 30)

    def upload(self, path: Union[str, Path]) -> None:
        """Choose a file in the speech input (its upload tab)."""
        self._tab("Upload file")
        field = self.driver.find_element(
            By.CSS_SELECTOR, "#speech-input input[type=file]"
        )
        field.send_keys(str(Path(path).resolve()))

    def record(self, seconds: float) -> None:
        """Record `seconds` of the microphone and stop."""
        self.start_recording()
        time.sleep(seconds)
        self.stop_recording()

    def start_recording(self) -> None:
        self._tab("Record audio")
        self._click("#speech-input button.record-button")

    def stop_recording(self) -> None:
        self._click("#speech-input button.stop-button")

    def type(self, text: str, enter: bool = True) -> None:
        """Type `text`, then press Enter unless not `enter`."""
        self._typed_input().send_keys(text + (Keys.ENTER if enter else ""))

    def press_enter(self) -> None:
        self._typed_input().send_keys(Keys.ENTER)

    def reset(self) -> None:
        self._click("#reset")
        self.wait(lambda: not self.answers("speech-chat") and not self.busy(), 30)

    # -- what the page shows -----------------------------------------------------------------
    def answers(self, chat: str) -> List[str]:
        """The answers in a chat (``speech-chat`` or ``text-chat``), first to last."""
        return self._texts(f"#{chat} [data-testid=bot] .message-content")

    def questions(self, chat: str) -> List[str]:
        return self._texts(f"#{chat} [data-testid=user] .message-content")

    def heard(self) -> str:
        return self._value("#heard textarea")

    def message(self) -> str:
        return "".join(self._texts("#message"))

    def has_alignment(self) -> bool:
        """Whether the alignment view shows a picture."""
        return bool(self.driver.find_elements(By.CSS_SELECTOR, "#alignment img"))

    def audio_file(self) -> Path:
        """The server's copy of the audio the speech input holds (a recording or upload)."""
        link = self.driver.find_element(By.CSS_SELECTOR, "#speech-input a[download]")
        return Path(unquote(link.get_attribute("href").split("file=", 1)[1]))

    def outside_requests(self) -> List[str]:
        """Resources the page asked any other host for (all of them failed)."""
        names = self.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        own = urlparse(self.url).netloc
        return [
            name
            for name in names
            if urlparse(name).scheme in ("http", "https")
            and urlparse(name).netloc != own
        ]

    def screenshot(self, path: Union[str, Path]) -> None:
        """The whole page, as tall as it is."""
        height = self.driver.execute_script("return document.body.scrollHeight")
        width = self.driver.get_window_size()["width"]
        self.driver.set_window_size(width, height + 100)
        self.driver.save_screenshot(str(path))

    # -- waiting -----------------------------------------------------------------------------
    def busy(self) -> bool:
        return self.driver.execute_script(BUSY)

    def wait(self, condition: Callable[[], bool], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError(f"the page did not get there in {timeout:g} s")
            time.sleep(0.05)

    def wait_until_answered(self, turns: int, timeout: float = 60.0) -> None:
        """Until both chats hold `turns` answers and the page is idle."""
        self.wait(
            lambda: len(self.answers("text-chat")) >= turns
            and len(self.answers("speech-chat")) >= turns
            and not self.busy(),
            timeout,
        )

    def wait_for_message(self, timeout: float = 30.0) -> str:
        self.wait(lambda: bool(self.message()) and not self.busy(), timeout)
        return self.message()

    def first_token_seconds(
        self, act: Callable[[], None], chat: str = "speech-chat", timeout: float = 120
    ) -> float:
        """Seconds from `act` (the question is complete: Enter pressed, a file chosen,
        recording stopped) to the first text of the new answer in `chat`, as the browser
        draws it."""
        self.driver.execute_script(WATCH_FIRST_TOKEN, chat)
        act()
        self.wait(
            lambda: self.driver.execute_script("return window.firstToken"), timeout
        )
        return self.driver.execute_script(
            "return (window.firstToken - window.turnStart) / 1000"
        )

    # -- widgets -----------------------------------------------------------------------------
    def _tab(self, label: str) -> None:
        tabs = self.driver.find_elements(
            By.CSS_SELECTOR, f"#speech-input button[aria-label='{label}']"
        )
        if tabs and "selected" not in tabs[0].get_attribute("class"):
            tabs[0].click()

    def _typed_input(self):
        return self.driver.find_element(By.CSS_SELECTOR, "#typed-input textarea")

    def _click(self, selector: str) -> None:
        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def _texts(self, selector: str) -> List[str]:
        """The text of each element, read at once (the page redraws while it streams)."""
        return self.driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(element => element.innerText.trim())",
            selector,
        )

    def _value(self, selector: str) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, selector).get_attribute(
            "value"
        )
