"""Pictures of a recorded episode (evaluation.Recording) and the world model's dream of it (evaluation.Dream):
animated GIFs of the episode and of real | reconstruction | open-loop prediction side by side, and a PNG strip
of the same, for image observations; for vector observations a PNG plot of real against predicted observation
and reward over the open-loop horizon. Written with Pillow and matplotlib, atomically (a temp file renamed).

Observations are drawn as they are where they are pixels (three channels, not binary); a single channel in
grey; other channels (MinAtar's objects, the grid world's agent and goal) each in a colour of its own, added."""

import io
import os

import numpy as np

from outputs.sinks import run_folder

# colours of the channels of a multi-channel observation, in channel order (repeated past ten)
CHANNEL_COLOURS = np.array([
    (0.90, 0.10, 0.10), (0.10, 0.60, 1.00), (0.20, 0.85, 0.20), (1.00, 0.80, 0.10), (0.80, 0.30, 0.90),
    (1.00, 0.50, 0.00), (0.10, 0.90, 0.90), (1.00, 0.40, 0.70), (0.60, 0.60, 0.60), (0.55, 0.35, 0.15)])
MIN_FRAME_PIXELS = 96  # frames are scaled up by a whole factor until their smaller side reaches this
PROGRESS_ROWS = 3  # rows under each GIF frame showing how far into the episode it is
FRAME_MS = 100  # display time of one GIF frame


def frame_rgb(obs, binary: bool) -> np.ndarray:
    """One observation [H, W] or [H, W, C] -> float RGB [H, W, 3] in [0, 1]."""
    obs = np.asarray(obs, np.float32)
    obs = obs[..., None] if obs.ndim == 2 else obs
    channels = obs.shape[-1]
    if channels == 3 and not binary:  # pixels
        return np.clip(obs / 255.0 if obs.max() > 1.0 else obs, 0.0, 1.0)
    if channels == 1:
        return np.repeat(np.clip(obs, 0.0, 1.0), 3, -1)
    colours = CHANNEL_COLOURS[np.arange(channels) % len(CHANNEL_COLOURS)]  # [C, 3]
    return np.clip(np.clip(obs, 0.0, 1.0) @ colours, 0.0, 1.0)


def scale_factor(shape: tuple[int, ...]) -> int:
    return max(1, -(-MIN_FRAME_PIXELS // min(shape[:2])))


def to_pixels(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Float RGB [H, W, 3] -> uint8 [H * factor, W * factor, 3], each cell a block of pixels."""
    pixels = np.round(255.0 * rgb).astype(np.uint8)
    return np.repeat(np.repeat(pixels, factor, 0), factor, 1)


def with_progress(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each uint8 frame with PROGRESS_ROWS rows under it, white up to its position in the sequence. Besides
    showing the time, it keeps consecutive frames distinct: the GIF writer merges identical ones."""
    out = []
    for t, frame in enumerate(frames):
        bar = np.zeros((PROGRESS_ROWS, frame.shape[1], 3), np.uint8)
        bar[:, :max(1, round(frame.shape[1] * (t + 1) / len(frames)))] = 255
        out.append(np.concatenate([frame, bar], 0))
    return out


def _atomic_write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    return path


def write_gif(path: str, frames: list[np.ndarray]) -> str:
    """An animated GIF of uint8 RGB frames (PROGRESS_ROWS rows added under each), looping."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in with_progress(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=FRAME_MS, loop=0)
    return _atomic_write(path, buffer.getvalue())


def _figure_png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def dream_strip(path: str, real, reconstruction, prediction, context: int, binary: bool, title: str) -> str:
    """PNG: rows real, reconstruction and open-loop prediction, one column per step, a line after the context."""
    from matplotlib.figure import Figure

    factor = scale_factor(real.shape[1:]) // 2 or 1
    gap = 2
    rows = []
    for frames in (real, reconstruction, prediction):
        cells = [to_pixels(frame_rgb(f, binary), factor) for f in frames]
        columns = [np.pad(cell, ((gap, gap), (gap, gap), (0, 0)), constant_values=64) for cell in cells]
        rows.append(np.concatenate(columns, 1))
    grid = np.concatenate(rows, 0)
    cell_h, cell_w = rows[0].shape[0], grid.shape[1] / len(real)
    figure = Figure(figsize=(max(4.0, grid.shape[1] / 60 + 1.5), grid.shape[0] / 60 + 1.0))
    axes = figure.add_subplot()
    axes.imshow(grid, interpolation="nearest")
    axes.set_yticks([cell_h * (i + 0.5) for i in range(3)], ["real", "reconstruction", "open loop"])
    axes.set_xticks([cell_w * (t + 0.5) for t in range(len(real))], [str(t) for t in range(len(real))],
                    fontsize=7)
    axes.axvline(cell_w * context - 0.5, color="white", linewidth=2)
    axes.set_xlabel(f"step (the model observes steps 0-{context - 1}, then predicts with the real actions)")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    return _atomic_write(path, _figure_png(figure))


def prediction_plot(path: str, real, reconstruction, prediction, real_reward, predicted_reward, context: int,
                    title: str, max_dims: int = 8) -> str:
    """PNG for vector observations: real, reconstructed and open-loop predicted value of each observation
    dimension (the first `max_dims`), and real against predicted reward, over the steps of the dream."""
    from matplotlib.figure import Figure

    dims = min(real.shape[1], max_dims)
    figure = Figure(figsize=(7, 1.6 * (dims + 1)))
    axes = figure.subplots(dims + 1, 1, sharex=True, squeeze=False)[:, 0]
    steps = np.arange(len(real))
    for d, ax in enumerate(axes[:dims]):
        ax.plot(steps, real[:, d], "k-", label="real")
        ax.plot(steps, reconstruction[:, d], ":", color="tab:blue", label="reconstruction")
        ax.plot(steps, prediction[:, d], "--", color="tab:red", label="open loop")
        ax.set_ylabel(f"obs[{d}]")
    axes[-1].plot(steps, real_reward, "k-", label="real")
    axes[-1].plot(steps, predicted_reward, "--", color="tab:red", label="predicted")
    axes[-1].set_ylabel("reward")
    axes[-1].set_xlabel(f"step (the model observes steps 0-{context - 1}, then predicts with the real actions)")
    for ax in axes:
        ax.axvline(context - 0.5, color="grey", linewidth=1)
    axes[0].legend(fontsize=7, loc="upper right")
    axes[0].set_title(title, fontsize=9)
    figure.tight_layout()
    return _atomic_write(path, _figure_png(figure))


def write_run_media(folder: str, env_steps: int, spec, binary: bool, recording, dream, context: int,
                    rendered: list[np.ndarray] | None = None) -> dict:
    """One run's files for a recorded episode and its dream (host arrays without the run axis), named by the env
    step; returns {tag: path}: `video/episode` (GIF) and `video/dream` (GIF) with `video/dream_strip` (PNG) for
    image observations, `video/prediction` (PNG) for vector observations. `rendered`: the episode's frames as
    the environment renders them (uint8 RGB), drawn for `video/episode` instead of the observations (and for
    vector observations, which have no picture otherwise)."""
    length = int(recording.length)
    dreamed = min(length, len(dream.prediction))  # steps of the dream inside the episode
    real = recording.obs[:dreamed]
    recon, pred = dream.reconstruction[:dreamed], dream.prediction[:dreamed]
    title = f"env step {env_steps}: {length} steps recorded, return {float(np.sum(recording.reward[:length])):g}"
    stem = os.path.join(folder, f"{env_steps:09d}")
    episode = {"video/episode": write_gif(stem + "_episode.gif", list(rendered[:length]))} if rendered else {}
    if len(spec.obs_shape) == 1:
        return {**episode, "video/prediction": prediction_plot(stem + "_prediction.png", real, recon, pred,
                                                               recording.reward[:dreamed], dream.reward[:dreamed],
                                                               context, title)}
    factor = scale_factor(spec.obs_shape)
    draw = lambda frame: to_pixels(frame_rgb(frame, binary), factor)
    separator = np.full((factor * spec.obs_shape[0], 2, 3), 255, np.uint8)
    side_by_side = [np.concatenate([draw(a), separator, draw(b), separator, draw(c)], 1)
                    for a, b, c in zip(real, recon, pred)]
    return {
        "video/episode": episode.get("video/episode")
        or write_gif(stem + "_episode.gif", [draw(frame) for frame in recording.obs[:length]]),
        "video/dream": write_gif(stem + "_dream.gif", side_by_side),
        "video/dream_strip": dream_strip(stem + "_dream.png", real, recon, pred, context, binary, title),
    }


class VideoFiles:
    """The videos sink: draws each run's recorded episode of a block (Block.recordings) into files under
    `folder`, one folder per run (`seed0`, or `VARIANT-seed0` in a sweep), and puts their paths in the block's
    media for the sinks after it (wandb, TensorBoard)."""

    def __init__(self, folder: str, seeds, variants, spec, binary: bool, context: int):
        self.spec, self.binary, self.context = spec, binary, context
        self.folders = [run_folder(folder, seed, variant) for seed, variant in zip(seeds, variants)]

    def write(self, block) -> None:
        for folder, media, recorded in zip(self.folders, block.media, block.recordings or []):
            media.update(write_run_media(folder, block.env_steps, self.spec, self.binary, recorded["recording"],
                                         recorded["dream"], self.context, recorded["rendered"]))

    def close(self) -> None:
        pass
