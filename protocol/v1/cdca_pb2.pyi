from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("device_id", "protocol_version", "model_sha256", "model_version", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    protocol_version: int
    model_sha256: str
    model_version: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, device_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., model_sha256: _Optional[str] = ..., model_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("protocol_version", "upload_budget", "prompt", "device_settings")
    class DeviceSettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BUDGET_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SETTINGS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    upload_budget: float
    prompt: Prompt
    device_settings: _containers.ScalarMap[str, str]
    def __init__(self, protocol_version: _Optional[int] = ..., upload_budget: _Optional[float] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., device_settings: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("image", "uncertainty", "frame_id", "predicted_class", "image_file")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FILE_FIELD_NUMBER: _ClassVar[int]
    image: Tensor
    uncertainty: float
    frame_id: int
    predicted_class: int
    image_file: ImageFile
    def __init__(self, image: _Optional[_Union[Tensor, _Mapping]] = ..., uncertainty: _Optional[float] = ..., frame_id: _Optional[int] = ..., predicted_class: _Optional[int] = ..., image_file: _Optional[_Union[ImageFile, _Mapping]] = ...) -> None: ...

class ImageFile(_message.Message):
    __slots__ = ("format", "data")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    format: str
    data: bytes
    def __init__(self, format: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("device_id", "batch_id", "samples", "batch_stats", "shift", "frames_seen", "last")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BATCH_STATS_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    batch_id: int
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    batch_stats: Tensor
    shift: bool
    frames_seen: int
    last: bool
    def __init__(self, device_id: _Optional[str] = ..., batch_id: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., batch_stats: _Optional[_Union[Tensor, _Mapping]] = ..., shift: _Optional[bool] = ..., frames_seen: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...

class UploadSummary(_message.Message):
    __slots__ = ("accepted", "refused_over_budget", "stored_before", "upload_pause_ms")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_OVER_BUDGET_FIELD_NUMBER: _ClassVar[int]
    STORED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_PAUSE_MS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    refused_over_budget: int
    stored_before: bool
    upload_pause_ms: int
    def __init__(self, accepted: _Optional[int] = ..., refused_over_budget: _Optional[int] = ..., stored_before: _Optional[bool] = ..., upload_pause_ms: _Optional[int] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("version", "scope", "environment_id", "parts", "learned_from_batch", "created_unix_ms")
    class PartsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FROM_BATCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    scope: str
    environment_id: str
    parts: _containers.MessageMap[str, Tensor]
    learned_from_batch: int
    created_unix_ms: int
    def __init__(self, version: _Optional[int] = ..., scope: _Optional[str] = ..., environment_id: _Optional[str] = ..., parts: _Optional[_Mapping[str, Tensor]] = ..., learned_from_batch: _Optional[int] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class PromptRequest(_message.Message):
    __slots__ = ("device_id", "known_version")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    known_version: int
    def __init__(self, device_id: _Optional[str] = ..., known_version: _Optional[int] = ...) -> None: ...

class ModelRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("manifest_json", "data", "offset", "total_size", "file_name")
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    manifest_json: str
    data: bytes
    offset: int
    total_size: int
    file_name: str
    def __init__(self, manifest_json: _Optional[str] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size: _Optional[int] = ..., file_name: _Optional[str] = ...) -> None: ...
