"""The TensorBoard sink: each run's records and media as event files written by tensorboardX, one folder per run
(`seed0`, or `VARIANT-seed0` in a sweep). TensorBoard itself is not needed to write them."""

import sys
import time
from typing import Mapping, Sequence

from outputs.sinks import Block, run_folder
from outputs.wandb_runs import numeric_metrics


class TensorBoardSink:
    """The numeric fields of each record (as the wandb runs get them) against `env_steps`, and the media files
    (PNG, or GIF that TensorBoard's image dashboard plays) as images. Like wandb, best effort: an error writing
    prints one warning and turns the sink off; training goes on."""

    def __init__(self, directory: str, seeds: Sequence[int], variants: Sequence[Mapping[str, float]] | None = None):
        from tensorboardX import SummaryWriter

        variants = variants or [{} for _ in seeds]
        self.directory = directory
        self.folders = [run_folder(directory, seed, variant) for seed, variant in zip(seeds, variants)]
        self._writers = [SummaryWriter(folder, flush_secs=3600) for folder in self.folders]

    def write(self, block: Block) -> None:
        """One block: each run's numeric record fields at its env_steps and its media files ({tag: path})."""
        try:
            for writer, record in zip(self._writers, block.records):
                step = int(record["env_steps"])
                for tag, value in numeric_metrics(record).items():
                    if tag != "env_steps":
                        writer.add_scalar(tag, value, step, walltime=time.time())
            for writer, files in zip(self._writers, block.media):
                for tag, path in files.items():
                    writer.file_writer.add_summary(_image_summary(tag, path), block.env_steps)
            for writer in self._writers:
                writer.flush()  # TensorBoard shows the run as it goes
        except (OSError, ValueError) as error:
            self._fail(error)

    def _fail(self, error: BaseException) -> None:
        print(f"warning: TensorBoard logging turned off ({type(error).__name__}: {error}); training goes on, "
              "metrics are still in the output file", file=sys.stderr)
        self.close()

    def close(self) -> None:
        writers, self._writers = self._writers, []
        for writer in writers:
            writer.close()


def _image_summary(tag: str, path: str):
    """A Summary holding a PNG or GIF file as it is encoded (an animation for a GIF)."""
    from PIL import Image
    from tensorboardX.proto.summary_pb2 import Summary

    with open(path, "rb") as file:
        encoded = file.read()
    with Image.open(path) as image:
        width, height = image.size
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded)
    return Summary(value=[Summary.Value(tag=tag, image=image)])
