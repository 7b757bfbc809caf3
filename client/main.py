"""`stillmoving` console script: customize, generate, export, jobs, job, cancel, customizations, files."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from tqdm import tqdm

from client.http import ApiError, Client


class StageBars:
    """One progress bar per job stage, advanced from the job record's stage and progress."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.bar, self.stage = quiet, None, None

    def __call__(self, job: dict) -> None:
        if self.quiet:
            return
        stage = job.get("stage") or job["status"]
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=100, desc=f"{job['kind']}:{stage}", unit="%", leave=True,
                            bar_format="{desc:<28} {bar} {n:>3.0f}%", file=sys.stderr)
        self.bar.n = round(100 * float(job.get("progress") or 0))
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print(data) -> None:
    print(json.dumps(data, indent=2, default=str))


def _finish(client: Client, job: dict, quiet: bool) -> dict:
    bars = StageBars(quiet)
    try:
        final = client.wait(job["job_id"], on_update=bars)
    finally:
        bars.close()
    if final["status"] != "succeeded":
        err = final.get("error") or {}
        raise ApiError(0, err.get("code", final["status"]), err.get("message", f"job {final['status']}"))
    return final


def customize_config(args) -> dict:
    """The config of `customize`: the prompts and only what the user set (the server's schema holds the defaults)."""
    config = {"prompts": args.prompt}
    for key in ("name", "num_images", "train_steps", "seed", "rank", "num_frames", "height", "width", "learning_rate"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return config


def upload_bar(path: Path, quiet: bool) -> tqdm:
    return tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="upload", disable=quiet, file=sys.stderr)


def cmd_customize(client: Client, args) -> int:
    config = customize_config(args)
    with upload_bar(args.checkpoint, args.quiet) as bar:
        accepted = client.customize(args.checkpoint, config, on_bytes=bar.update)
    print(f"customization {accepted['customization_id']} (job {accepted['job_id']})", file=sys.stderr)
    if args.no_wait:
        _print(accepted)
        return 0
    _finish(client, accepted, args.quiet)
    _print(client.customization(accepted["customization_id"]))
    return 0


def media_ref(file: str | None, job_id: str | None) -> dict | None:
    """A control's or init's source (``POST /generate``): an uploaded file's id or a generation's job id."""
    return {"file": file} if file else {"job_id": job_id} if job_id else None


def generate_request(args) -> dict:
    """The body of `generate`: what the user set (the server's schema holds the defaults); a control and an
    init when a source is given for them (`--control-file`/`--control-job`, `--init-file`/`--init-job`)."""
    request = {"prompt": args.prompt, "negative_prompt": args.negative_prompt, "format": args.output.suffix[1:] or "mp4"}
    for key in ("customization", "num_frames", "height", "width", "steps", "seed", "method", "guidance_scale",
                "fps", "scale"):
        value = getattr(args, key)
        if value is not None:
            request[{"customization": "customization_id", "scale": "spatial_adapter_scale"}.get(key, key)] = value
    control = media_ref(args.control_file, args.control_job)
    if control is not None:
        request["control"] = {**control, "type": args.control_type or "canny"}
        if args.control_scale is not None:
            request["control"]["scale"] = args.control_scale
    init = media_ref(args.init_file, args.init_job)
    if init is not None:
        request["init"] = {**init, **({"strength": args.init_strength} if args.init_strength is not None else {})}
    return request


def upload(client: Client, path: Path, quiet: bool, idempotency_key: str | None = None) -> dict:
    with upload_bar(path, quiet) as bar:
        return client.upload_file(path, on_bytes=bar.update, idempotency_key=idempotency_key)


def upload_local_sources(client: Client, args) -> None:
    """`--control-file`/`--init-file` naming a local file: upload it first (once) and use its file id."""
    uploaded: dict[str, str] = {}
    for name in ("control_file", "init_file"):
        value = getattr(args, name)
        if value and Path(value).is_file():
            if value not in uploaded:
                uploaded[value] = upload(client, Path(value), args.quiet)["file_id"]
                print(f"uploaded {value} as file {uploaded[value]}", file=sys.stderr)
            setattr(args, name, uploaded[value])


def cmd_generate(client: Client, args) -> int:
    upload_local_sources(client, args)
    accepted = client.generate(generate_request(args))
    final = _finish(client, accepted, args.quiet)
    client.download(final["result"]["video_url"], args.output)
    print(str(args.output))
    return 0


def cmd_files(client: Client, args) -> int:
    if args.files_command == "upload":
        _print(upload(client, args.path, args.quiet, args.idempotency_key))
    elif args.files_command == "list":
        _print(client.files(limit=args.limit, cursor=args.cursor))
    elif args.files_command == "show":
        _print(client.file(args.file_id))
    else:
        client.delete_file(args.file_id)
        print(f"deleted file {args.file_id}", file=sys.stderr)
    return 0


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cmd_export(client: Client, args) -> int:
    """Download an export (checked against its sha256) into `--output` (a directory: under the server's name)."""
    export = client.export(args.customization_id, args.format, args.include_checkpoint)
    if args.url_only:
        _print(export)
        return 0
    out = args.output
    target = out / export["filename"] if out.is_dir() else out
    client.download(export["url"], target)
    if _sha256(target) != export["sha256"]:
        raise ApiError(0, "download_corrupt", f"{target} does not match the export's sha256 {export['sha256']}")
    print(str(target))
    if export.get("checkpoint_url"):
        checkpoint = target.parent / export["checkpoint_filename"]
        client.download(export["checkpoint_url"], checkpoint)
        print(str(checkpoint))
    return 0


def _size_args(parser: argparse.ArgumentParser) -> None:
    """What both jobs take: the video's size and the seed (absent: the server's defaults, a random seed for videos)."""
    for name in ("--seed", "--num-frames", "--height", "--width"):
        parser.add_argument(name, type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stillmoving", description=__doc__)
    parser.add_argument("--server", default=None, help="API URL (env STILLMOVING_URL, default http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=None, help="API key (env STILLMOVING_API_KEY)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("customize", help="upload a customized T2I checkpoint and train its spatial adapters")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--prompt", action="append", required=True)
    c.add_argument("--name")
    c.add_argument("--num-images", type=int, help="default: the server's (GET /openapi.json)")
    c.add_argument("--train-steps", type=int, help="default: the server's")
    c.add_argument("--rank", type=int)
    c.add_argument("--learning-rate", type=float)
    _size_args(c)
    c.add_argument("--no-wait", action="store_true", help="print the job and return at once")

    g = sub.add_parser("generate", help="sample a video and download it")
    g.add_argument("--customization", help="customization id (none: the base model)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("-o", "--output", type=Path, required=True, help="out.mp4 or out.gif")
    g.add_argument("--method", choices=["still-moving", "naive", "base"])
    _size_args(g)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--fps", type=int)
    g.add_argument("--scale", type=float, help="spatial adapter scale")
    for role, what in (("control", "drives a ControlNet"), ("init", "is re-rendered (video-to-video)")):
        source = g.add_mutually_exclusive_group()
        source.add_argument(f"--{role}-file", metavar="FILE_ID_OR_PATH",
                            help=f"an uploaded file whose video {what}; a local file is uploaded first")
        source.add_argument(f"--{role}-job", metavar="JOB_ID", help=f"a succeeded generation whose video {what}")
    g.add_argument("--control-type", help="canny (default), depth, openpose, lineart or precomputed; GET /limits "
                   "lists the control_types the server computes and its ControlNets")
    g.add_argument("--control-scale", type=float, help="ControlNet conditioning scale, 0..2")
    g.add_argument("--init-strength", type=float, help="how much of the init video is re-noised, (0, 1]")

    e = sub.add_parser("export", help="download a customization's Spatial Adapter for diffusers, A1111 or ComfyUI")
    e.add_argument("customization_id")
    e.add_argument("--format", choices=["diffusers", "kohya", "comfyui"], required=True,
                   help="diffusers: LoRA + README (zip); kohya: A1111/kohya LoRA (.safetensors); comfyui: bundle (zip)")
    e.add_argument("-o", "--output", type=Path, default=Path("."), help="a file, or a directory (default: here)")
    e.add_argument("--include-checkpoint", action="store_true",
                   help="also download your uploaded checkpoint, under the name the export gives it")
    e.add_argument("--url-only", action="store_true", help="print the presigned URL and the export's facts")

    sub.add_parser("jobs", help="your jobs, newest first").add_argument("--limit", type=int, default=20)
    sub.add_parser("job", help="one job").add_argument("job_id")
    sub.add_parser("cancel", help="cancel a job").add_argument("job_id")
    sub.add_parser("customizations", help="your customizations").add_argument("--limit", type=int, default=20)

    f = sub.add_parser("files", help="reference videos and images for a control or an init")
    files = f.add_subparsers(dest="files_command", required=True)
    up = files.add_parser("upload", help="upload a video (MP4, WebM, GIF) or image (PNG, JPEG)")
    up.add_argument("path", type=Path)
    up.add_argument("--idempotency-key", help="a retry with the same key and file gets the first upload's file")
    listing = files.add_parser("list", help="your files, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    files.add_parser("show", help="one file, as probed").add_argument("file_id")
    files.add_parser("delete", help="delete a file no queued or running generation reads").add_argument("file_id")
    return parser


def check_generate(parser: argparse.ArgumentParser, args) -> None:
    """The control's and init's settings need their source (argparse exits 2 with the message)."""
    for role, options in (("control", ("control_type", "control_scale")), ("init", ("init_strength",))):
        if not (getattr(args, f"{role}_file") or getattr(args, f"{role}_job")):
            for name in options:
                if getattr(args, name) is not None:
                    parser.error(f"--{name.replace('_', '-')} needs --{role}-file or --{role}-job")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate":
        check_generate(parser, args)
    client = Client(url=args.server, api_key=args.api_key)
    try:
        if args.command == "customize":
            return cmd_customize(client, args)
        if args.command == "generate":
            return cmd_generate(client, args)
        if args.command == "files":
            return cmd_files(client, args)
        if args.command == "export":
            return cmd_export(client, args)
        if args.command == "jobs":
            _print(client.jobs(limit=args.limit))
        elif args.command == "job":
            _print(client.job(args.job_id))
        elif args.command == "cancel":
            _print(client.cancel(args.job_id))
        else:
            _print(client.customizations(limit=args.limit))
        return 0
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
