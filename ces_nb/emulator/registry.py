"""The loaded apps, each with its runtime, sharing one session store; and the real model
(`--model`) their agents talk to instead of the playback model."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, AsyncGenerator

import grpc
from google.adk.sessions import BaseSessionService

from .errors import EmulatorError, quote
from .export import LoadedApp
from .names import Name
from .python_runner import PythonToolRunner
from .runtime import AppRuntime
from .sandbox import SandboxLimits

if TYPE_CHECKING:
    from google.adk.models.base_llm import BaseLlm

log = logging.getLogger("ces_nb.emulator")

# The key sent to an OpenAI-compatible server at --model-base-url when no key is configured:
# local servers (Ollama, llama.cpp, vLLM) ignore it, but the OpenAI client wants one.
LOCAL_API_KEY = "sk-no-key-needed"


class ModelError(ValueError):
    """A --model setting the emulator cannot use; the message says what to pass instead."""


class AppRegistry:
    def __init__(self, apps: list[LoadedApp], session_service: BaseSessionService, model: str | None = None,
                 tool_limits: SandboxLimits | None = None, model_base_url: str | None = None,
                 model_api_key_env: str | None = None):
        self.session_service = session_service
        self.python_runner = PythonToolRunner(limits=tool_limits)
        # One model for every agent of every app: an id ADK resolves (Gemini), or a LiteLlm.
        real_model = build_model(model, model_base_url, model_api_key_env) if model else None
        self.runtimes: dict[str, AppRuntime] = {}
        for app in apps:
            if app.app_id in self.runtimes:
                raise ValueError(f"two apps share the id {app.app_id!r}; load each app once")
            self.runtimes[app.app_id] = AppRuntime(app, session_service, self.python_runner, real_model)

    def runtime(self, name: Name) -> AppRuntime:
        try:
            return self.runtimes[name.app]
        except KeyError:
            loaded = ", ".join(sorted(self.runtimes)) or "none"
            raise EmulatorError.not_found(
                f"app {quote(name.app)} is not loaded in the emulator (loaded apps: {loaded}); "
                f"start it with `ces-nb emulator --app PATH` or use one of those ids"
            ) from None

    async def close(self) -> None:
        await self.python_runner.close()
        close_store = getattr(self.session_service, "close", None)  # the SQLite writer's thread, the engine
        if close_store is not None:
            await close_store()


# -- the real model (--model) ----------------------------------------------------------


def build_model(model: str, base_url: str | None = None, api_key_env: str | None = None) -> "str | BaseLlm":
    """What `--model ID [--model-base-url URL] [--model-api-key-env VAR]` runs the agents on.

    * A model ADK resolves itself (a Gemini id such as gemini-2.5-flash, or a Vertex endpoint):
      the id, as ADK takes it; GOOGLE_API_KEY or the Vertex environment, as ADK reads them.
    * A LiteLLM model string (`openai/NAME`, `ollama_chat/NAME`, `anthropic/NAME`, ...): ADK's
      LiteLlm wrapper, at `base_url` when given (a local OpenAI-compatible server such as Ollama),
      with the key from `api_key_env`; at a base URL with no such variable, OPENAI_API_KEY if set,
      else a dummy key (local servers take any).

    Nothing is downloaded: LiteLLM's model price map is the one in its wheel, not fetched from
    GitHub. Raises ModelError for a model nothing can run, naming the fix."""
    model = model.strip()
    if not model:
        raise ModelError("--model is empty: pass a model id such as gemini-2.5-flash or openai/llama3.2")
    if api_key_env is not None and not os.environ.get(api_key_env):
        raise ModelError(f"--model-api-key-env {api_key_env}: the variable {api_key_env} is not set; "
                         f"export it with the model's API key, or leave the flag out for a local server")
    # Before anything imports litellm (ADK's registry does to resolve provider/model names):
    # it would fetch its price map from GitHub at import, and in DEV mode load a .env file.
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    # A server that streams without usage has LiteLLM count tokens itself, and for a model named
    # like llama-3 that fetches a tokenizer from the Hugging Face hub. Offline, it counts with the
    # tokenizer in its wheel (or a cached one) instead.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from google.adk.models.registry import LLMRegistry

    litellm_style = "/" in model and not model.startswith("projects/")
    if base_url is None and not litellm_style:
        try:
            LLMRegistry.resolve(model)
        except ValueError as exc:
            raise ModelError(f"--model {model}: {str(exc).splitlines()[0]} Pass a Gemini id (gemini-2.5-flash, with "
                             f"GOOGLE_API_KEY) or a LiteLLM model string such as openai/NAME") from None
        return model  # ADK's own (Gemini): as before
    if not litellm_style:
        raise ModelError(f"--model {model} with --model-base-url: name the model as LiteLLM does, with its provider, "
                         f"e.g. --model openai/{model} for an OpenAI-compatible server such as Ollama")
    try:
        from google.adk.models.lite_llm import LiteLlm
        import litellm
    except ImportError:
        raise ModelError(f"--model {model} runs on LiteLLM, which is not installed: pip install 'ces_nb[model]'") from None
    provider = model.split("/", 1)[0]
    if provider not in litellm.provider_list:
        raise ModelError(f"--model {model}: LiteLLM has no provider {provider!r}; for an OpenAI-compatible server "
                         f"use openai/{model.split('/', 1)[1]} (providers: https://docs.litellm.ai/docs/providers)")
    litellm.suppress_debug_info = True  # its "Give Feedback / Get Help" banner on every error
    kwargs: dict[str, Any] = {}
    if base_url is not None:
        kwargs["api_base"] = base_url.rstrip("/")
        kwargs["api_key"] = os.environ.get(api_key_env or "OPENAI_API_KEY") or LOCAL_API_KEY
    elif api_key_env is not None:
        kwargs["api_key"] = os.environ[api_key_env]
    return _make_litellm_class(LiteLlm)(model=model, **kwargs)


_LITELLM_CLASS = None


def _make_litellm_class(base: type) -> type:
    """ADK's LiteLlm, whose failures reach the client as a gRPC status saying what to do."""
    global _LITELLM_CLASS
    if _LITELLM_CLASS is None:
        class CesLiteLlm(base):
            async def generate_content_async(self, llm_request, stream: bool = False) -> AsyncGenerator:
                try:
                    async for response in super().generate_content_async(llm_request, stream):
                        yield response
                except Exception as exc:
                    error = model_error(exc, self.model, self._additional_args.get("api_base"))
                    if error is None:
                        raise
                    log.warning("turn failed: %s", error.message)  # one line; the client gets the same message
                    raise error from exc

        _LITELLM_CLASS = CesLiteLlm
        # ADK logs every failed node with its traceback; for a model that is down, the line above says it.
        for name in ("google_adk.google.adk.workflow._node_runner", "google_adk.google.adk.runners"):
            logging.getLogger(name).addFilter(_NotModelErrors())
    return _LITELLM_CLASS


class _NotModelErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, EmulatorError) and isinstance(exc.__cause__, Exception)
                    and type(exc.__cause__).__module__.startswith(("litellm", "openai", "httpx", "aiohttp")))


def model_error(exc: BaseException, model: str, base_url: str | None) -> EmulatorError | None:
    """A LiteLLM (OpenAI client) failure as the status the turn fails with; None for anything else.

    LiteLLM maps a refused connection to InternalServerError ("Connection error."), so the causes
    are read too: a connection that failed below is UNAVAILABLE whatever LiteLLM called it."""
    import httpx
    import litellm
    import openai

    chain, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    where = f"at {base_url}" if base_url else "(its provider's API)"
    fix_url = (f"start the server there (for Ollama: `ollama serve`), or pass the URL it listens on with "
               f"--model-base-url (Ollama: http://localhost:11434/v1)") if base_url else "check the network and the provider's status"
    root = chain[-1]
    reason = (str(root) or type(root).__name__).splitlines()[0][:200]

    def any_of(*types: type) -> bool:
        return any(isinstance(e, types) for e in chain)

    if any_of(litellm.Timeout, openai.APITimeoutError, httpx.TimeoutException, TimeoutError):
        return EmulatorError(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f"the model {model} {where} did not answer in time ({reason}); {fix_url}")
    if any_of(litellm.APIConnectionError, openai.APIConnectionError, httpx.TransportError, ConnectionError):
        return EmulatorError(grpc.StatusCode.UNAVAILABLE,
                             f"the model {model} {where} is unreachable ({reason}): {fix_url}. The emulator keeps serving")
    reason = (getattr(exc, "message", "") or str(exc) or type(exc).__name__).splitlines()[0][:300]
    if any_of(litellm.AuthenticationError, litellm.PermissionDeniedError):
        return EmulatorError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"the model {model} {where} refused the API key ({reason}): put the key in a variable and "
                             f"pass --model-api-key-env VAR")
    if any_of(litellm.NotFoundError):
        name = model.split("/", 1)[-1]
        return EmulatorError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"the model {model} {where} was not found ({reason}): check the name (for Ollama: "
                             f"`ollama pull {name}`; `ollama list` shows what is there)")
    if any_of(litellm.RateLimitError):
        return EmulatorError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"the model {model} {where} is rate-limited ({reason}): wait and send the turn again")
    if any_of(litellm.BadRequestError):
        return EmulatorError(grpc.StatusCode.FAILED_PRECONDITION,
                             f"the model {model} {where} rejected the request ({reason}): does the model take tool "
                             f"calls? (Ollama: a model tagged `tools`)")
    if any_of(openai.APIError):
        return EmulatorError(grpc.StatusCode.UNAVAILABLE, f"the model {model} {where} failed ({reason}); send the turn again")
    return None
