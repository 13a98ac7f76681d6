"""The run record (JSON + predictions CSV) shared by probe and finetune, read by report. Torch-free."""

from medprobe.results.record import RECORD_SCHEMA, read_record, record_paths, write_record

__all__ = ["RECORD_SCHEMA", "read_record", "record_paths", "write_record"]
