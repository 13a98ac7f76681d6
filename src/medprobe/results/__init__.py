"""What probe and finetune share: the run record (JSON + predictions CSV) and the metrics with bootstrap
CIs; read by report. Torch-free."""

from medprobe.results.record import RECORD_SCHEMA, read_record, record_paths, write_record

__all__ = ["RECORD_SCHEMA", "read_record", "record_paths", "write_record"]
