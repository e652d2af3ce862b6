"""Type stubs of the extension module (python/src/lib.rs). The public API is in __init__.py."""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

__version__: str
DEFAULT_LM: str
DEFAULT_CLIP: str
DEFAULT_DIFFUSION_MODEL: str

def _default_thread_count() -> int:
    """candle's own thread count, computed once (physical cores); __init__.py pins
    RAYON_NUM_THREADS to it."""

class Run(Iterator[str]):
    """A describe or attack on a worker thread: JSON events, the last one `done`."""
    def __iter__(self) -> "Run": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...
    @property
    def running(self) -> bool: ...

class Models:
    def __init__(
        self, lm: str, encoder: Optional[str] = None, device: str = "cpu", preset: Optional[str] = None
    ) -> None: ...
    @property
    def encoder(self) -> Optional[str]: ...
    def describe(self, image: Union[str, bytes, None], options: str) -> Run: ...
    def embed_text(self, texts: List[str]) -> Tuple[bytes, int]: ...
    def embed_image(self, image: Union[str, bytes]) -> bytes: ...
    def score(
        self, image: Union[str, bytes], captions: List[str], prefix: Optional[str] = None, torchmetrics: bool = False
    ) -> str: ...

class AttackerModels:
    def __init__(
        self, lm: str, victim: Optional[str] = None, chat_template: Optional[str] = None, device: str = "cpu"
    ) -> None: ...
    def attack(
        self, options: str, objective: Optional[Callable[[List[str]], Sequence[float]]] = None
    ) -> Run: ...

class Diffusion:
    def __init__(self, model: str, variant: Optional[str] = None, device: str = "cpu") -> None: ...
    def generate(
        self, prompt: str, steps: int, scheduler: str, guidance: float, size: int, seed: int, negative: str
    ) -> Tuple[int, int, bytes]: ...
