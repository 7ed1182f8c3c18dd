"""Committing row-level delete files with pyiceberg, which has no public writer of them: its
snapshot producer, told to write what it adds into a delete manifest (as Spark's
merge-on-read and Flink's upserts commit them)."""

from pyiceberg.manifest import ManifestContent, ManifestWriterV2
from pyiceberg.table.update.snapshot import _FastAppendFiles


class DeleteManifestWriter(ManifestWriterV2):
    def content(self):
        return ManifestContent.DELETES

    @property
    def _meta(self):
        return {**super()._meta, "content": "deletes"}


def delete_producer(table, tx, operation):
    """A producer in `tx` whose `append_data_file` adds delete files; `commit()` it."""
    producer = _FastAppendFiles(operation=operation, transaction=tx, io=table.io)

    def writer(spec, producer=producer):
        return DeleteManifestWriter(
            spec,
            producer.schema(),
            producer.new_manifest_output(),
            producer._snapshot_id,
            producer._compression,
        )

    producer.new_manifest_writer = writer
    return producer
