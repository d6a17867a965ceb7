"""Errors whose messages are fit to show a user. The worker (tts_runner/edge/worker.py) turns them into
the endpoint's {"error", "traceback"}; anything else is reported as an internal error."""


class TTSError(Exception):
    """Base class: the message says what went wrong and, where it helps, what is allowed."""


class InputError(TTSError):
    """The payload or job spec is invalid."""


class NotFound(InputError):
    """The job names a voice or model this worker does not have."""


class SettingError(InputError):
    """A configuration value (conf/, environment, command line) is out of range."""


class ModelError(TTSError):
    """A model could not be found or loaded."""


class GenerationError(TTSError):
    """Generation failed for a chunk after all retries."""


class SinkError(TTSError):
    """The audio could not be delivered (S3 upload, file write, size limit)."""


class DeviceFailure(TTSError):
    """The GPU failed in a way that may have broken its CUDA context (not out of memory): the
    worker answers with it, reports itself unhealthy and exits, so a fresh one replaces it."""


class WorkerBusy(TTSError):
    """The worker's queue is full: the job is refused at once (send it again, or elsewhere)."""


class StoreFull(TTSError):
    """The saved-voice store holds as many voices, or megabytes, as its bound allows."""


class JobCancelled(TTSError):
    """The job was cancelled (by RunPod, or its client) while it ran."""


class ShuttingDown(JobCancelled):
    """The worker is stopping (SIGTERM): it takes no new job, and a job still running when its grace
    time ends is answered with this."""


class TimedOut(JobCancelled):
    """The job ran past its time limit (worker.job_timeout_seconds): it was stopped."""


class SlowReader(JobCancelled):
    """A stream's reader made no room in its buffer in time: the stream is dropped, its job stopped."""


class PayloadError(InputError):
    """A field of the payload (or job spec) is invalid: `path` is its JSON path ($.params.top_k),
    `detail` what is wrong and what is allowed. The command line names the config key instead."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"Invalid input at {path}: {detail}")
        self.path, self.detail = path, detail
