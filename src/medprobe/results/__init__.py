"""What probe and finetune share: the run record (JSON + predictions CSV) and the metrics with bootstrap
CIs; read by report. Torch-free."""

from medprobe.results.record import read_record, record_paths, write_record
from medprobe.results.schema import RECORD_SCHEMA

__all__ = ["RECORD_SCHEMA", "read_record", "record_paths", "write_record"]
