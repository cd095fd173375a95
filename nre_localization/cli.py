"""``nre-localization``: build maps, localise images, evaluate and export poses (offline tools).

Every command reads and writes the formats of docs (COLMAP / hloc lists world->camera, TUM
trajectories camera->world). Any :class:`~nre_localization.errors.NreError` ends the command with
one line on stderr and exit status 2; outputs are written to a temporary name and renamed, so a
failed command leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nre_localization.errors import InputError, NreError

PROG = "nre-localization"

EPILOG_BUILD = """\
SOURCE is detected from its content:
  COLMAP model   folder with cameras/images(.txt|.bin) (also SOURCE/sparse or SOURCE/sparse/0);
                 with points3D they are used, without them points are triangulated from SIFT
                 matches between covisible images, checked against the known poses.
  TUM folder     rgb.txt + groundtruth.txt (+ camera.yaml unless --camera); poses interpolated
                 at image stamps (at most --max-dt seconds from a ground-truth sample).
  7-Scenes       seq-NN/frame-*.{color,depth,pose} (+ TrainSplit/TestSplit.txt); points from depth.
  ROS bag        .bag (ROS 1), ROS 2 folder (sqlite3 or mcap) or .mcap file; images + CameraInfo
                 + a pose topic (--pose-topic) or TF (--world-frame -> image frame).
examples:
  nre-localization build-map ../shared/data/strecha/Herz-Jesus-P25 --out hj.nremap --exclude q.txt
  nre-localization build-map run.mcap --out run.nremap --image-topic /cam/image_raw \\
      --camera-info-topic /cam/camera_info --world-frame map
"""


def _positive_int(v: str) -> int:
    i = int(v)
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return i


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Visual localisation with the Neural Reprojection Error: offline tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run '%(prog)s COMMAND --help' for the flags of each command. "
        "Errors: one line on stderr, exit status 2.",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads for torch/OpenCV (default: library default)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # build-map -----------------------------------------------------------------------------
    b = sub.add_parser(
        "build-map",
        help="build a .nremap from posed images (COLMAP, TUM, 7-Scenes, bag)",
        description="Build a map: 3D points (given, from depth or triangulated), per-point "
        "descriptors of the network fused over observations, keyframe global descriptors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG_BUILD,
    )
    b.add_argument(
        "source",
        metavar="SOURCE",
        type=Path,
        help="COLMAP model, TUM folder, 7-Scenes folder or bag",
    )
    b.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="MAP",
        help="output map file (.nremap), written atomically",
    )
    b.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="image folder (default: SOURCE/images or next to the model)",
    )
    b.add_argument(
        "--exclude",
        type=Path,
        metavar="FILE",
        help="image names to leave out of the map, one per line (e.g. queries)",
    )
    b.add_argument(
        "--camera",
        type=Path,
        metavar="YAML",
        help="camera calibration (OpenCV / ROS YAML) for TUM folders or bags without CameraInfo",
    )
    b.add_argument(
        "--max-dt",
        type=float,
        metavar="S",
        help="largest time gap between an image stamp and a pose sample (TUM default 0.02 s, bags 0.05 s)",
    )
    b.add_argument(
        "--split",
        choices=("train", "test", "all"),
        default="train",
        help="7-Scenes sequences to use (default: train)",
    )
    b.add_argument(
        "--image-topic",
        metavar="TOPIC",
        help="bag: sensor_msgs/Image or CompressedImage topic (default: the only one)",
    )
    b.add_argument(
        "--camera-info-topic",
        metavar="TOPIC",
        help="bag: sensor_msgs/CameraInfo topic (default: the only one)",
    )
    b.add_argument(
        "--pose-topic",
        metavar="TOPIC",
        help="bag: ground-truth pose topic (PoseStamped, PoseWithCovarianceStamped, Odometry, TransformStamped); default: use TF",
    )
    b.add_argument(
        "--world-frame",
        metavar="FRAME",
        help="bag, TF mode: world frame (default: map, world or odom)",
    )
    b.add_argument(
        "--camera-frame",
        metavar="FRAME",
        help="bag: camera optical frame (default: the images' header frame_id)",
    )
    b.add_argument(
        "--every",
        type=_positive_int,
        default=1,
        metavar="N",
        help="bag: keep every N-th image (default 1)",
    )
    b.add_argument(
        "--no-descriptors",
        action="store_true",
        help="geometry-only map (no network); the engine cannot use it",
    )
    b.add_argument(
        "--weights", type=Path, metavar="FILE", help="model weights (default: the shipped weights)"
    )
    b.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    b.add_argument(
        "--max-features",
        type=_positive_int,
        default=4000,
        metavar="N",
        help="triangulation: SIFT features per image (default 4000)",
    )
    b.add_argument(
        "--neighbours",
        type=_positive_int,
        default=6,
        metavar="K",
        help="triangulation: covisible images matched per image (default 6)",
    )
    b.add_argument(
        "--max-image-width",
        type=int,
        default=640,
        metavar="PX",
        help="describe keyframes at most this wide, as localize sees queries (0: native; default 640)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    # localize ------------------------------------------------------------------------------
    lo = sub.add_parser(
        "localize",
        help="localise query images against a map",
        description="Localise each query (global relocalisation: retrieval, candidate points, NRE "
        "solve; no prior). Queries may use another camera and resolution than the map.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="QUERIES: hloc queries_with_intrinsics, one line per image:\n"
        "  NAME MODEL WIDTH HEIGHT PARAMS...   (COLMAP camera models and pixel convention)\n"
        "PRED: 'NAME qw qx qy qz tx ty tz' (world->camera); declined queries in PRED.declined\n"
        "(one NAME per line, '  # reason' after it), never given a fallback pose.",
    )
    lo.add_argument(
        "--map",
        required=True,
        type=Path,
        metavar="MAP",
        help="map built by build-map with the same weights",
    )
    lo.add_argument(
        "--images",
        required=True,
        type=Path,
        metavar="DIR",
        help="folder the query names are relative to",
    )
    lo.add_argument(
        "--queries", required=True, type=Path, metavar="FILE", help="queries_with_intrinsics file"
    )
    lo.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PRED",
        help="output pose list (PRED.declined lists declined queries)",
    )
    lo.add_argument(
        "--weights", type=Path, metavar="FILE", help="model weights (default: the shipped weights)"
    )
    lo.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    lo.add_argument(
        "--top-k",
        type=_positive_int,
        default=5,
        metavar="K",
        help="keyframes retrieved per query (default 5)",
    )
    lo.add_argument(
        "--max-points",
        type=_positive_int,
        default=4000,
        metavar="N",
        help="candidate map points per solve (default 4000)",
    )
    lo.add_argument(
        "--max-image-width",
        type=int,
        default=640,
        metavar="PX",
        help="wider queries are resized (0: never; default 640)",
    )
    lo.add_argument(
        "--timings",
        type=Path,
        metavar="JSON",
        help="write per-query stage timings and latency percentiles",
    )
    lo.add_argument("--quiet", action="store_true", help="no progress bars")

    # localize-pair -------------------------------------------------------------------------
    lp = sub.add_parser(
        "localize-pair",
        help="localise one query against one posed reference image and given 3D points",
        description="The reference code's API: descriptors of the points are sampled in the "
        "reference image at their projections; the query pose is solved without a prior.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CAMERA strings: 'MODEL WIDTH HEIGHT PARAMS...' (COLMAP convention).\n"
        "POINTS file: one 'X Y Z' (world, metres) per line, or a .npy array [N, 3].\n"
        "Output: 'qw qx qy qz tx ty tz' (world->camera) on stdout or --out; exit 3 if declined.",
    )
    lp.add_argument("--query", required=True, type=Path, metavar="IMG", help="query image")
    lp.add_argument("--query-camera", required=True, metavar="CAMERA", help="query intrinsics")
    lp.add_argument("--reference", required=True, type=Path, metavar="IMG", help="reference image")
    lp.add_argument(
        "--reference-camera", required=True, metavar="CAMERA", help="reference intrinsics"
    )
    lp.add_argument(
        "--reference-pose",
        required=True,
        metavar="POSE",
        help="reference world->camera 'qw qx qy qz tx ty tz'",
    )
    lp.add_argument(
        "--points", required=True, type=Path, metavar="FILE", help="3D points seen by the reference"
    )
    lp.add_argument(
        "--out", type=Path, metavar="FILE", help="write the pose line here instead of stdout"
    )
    lp.add_argument(
        "--weights", type=Path, metavar="FILE", help="model weights (default: the shipped weights)"
    )
    lp.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    lp.add_argument(
        "--max-image-width",
        type=int,
        default=640,
        metavar="PX",
        help="wider images are resized, intrinsics follow (0: never; default 640)",
    )

    # evaluate ------------------------------------------------------------------------------
    ev = sub.add_parser(
        "evaluate",
        help="compare predicted poses with ground truth",
        description="Median errors, recall at (0.25 m, 2 deg), (0.5 m, 5 deg), (5 m, 10 deg), "
        "(5 cm, 5 deg) over all queries (declined = failure), decline rate, ATE without alignment.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="PRED: hloc list 'NAME qw qx qy qz tx ty tz' (world->camera) or TUM trajectory\n"
        "'t tx ty tz qx qy qz qw' (camera->world), detected. GT: a COLMAP model folder (names)\n"
        "or a TUM trajectory (stamps; hloc names must start with the stamp, e.g. rgb/1311.16.png).",
    )
    ev.add_argument("--pred", required=True, type=Path, metavar="PRED", help="predictions")
    ev.add_argument(
        "--gt",
        required=True,
        type=Path,
        metavar="GT",
        help="ground truth: COLMAP model folder or TUM trajectory",
    )
    ev.add_argument(
        "--json", required=True, type=Path, metavar="OUT", help="summary + per-query errors (JSON)"
    )
    ev.add_argument("--csv", type=Path, metavar="OUT", help="per-query errors (CSV)")
    ev.add_argument(
        "--plots",
        type=Path,
        metavar="DIR",
        help="write error_cdf.png, trajectory.png, per_query.png here",
    )
    ev.add_argument(
        "--queries",
        type=Path,
        metavar="FILE",
        help="full query list (names as first field); unlisted in PRED = failure",
    )
    ev.add_argument(
        "--declined", type=Path, metavar="FILE", help="declined list (default PRED.declined)"
    )
    ev.add_argument(
        "--pred-format",
        choices=("auto", "hloc", "tum"),
        default="auto",
        help="prediction format (default: detect)",
    )
    ev.add_argument(
        "--max-dt",
        type=float,
        default=0.02,
        metavar="S",
        help="TUM ground truth: largest stamp gap (default 0.02 s)",
    )
    ev.add_argument("--label", default="prediction", help="method name in plots")

    # export --------------------------------------------------------------------------------
    ex = sub.add_parser(
        "export",
        help="convert poses between TUM, COLMAP/hloc lists and COLMAP models",
        description="Read poses from a map (keyframes), a COLMAP model, an hloc/COLMAP pose list "
        "or a TUM trajectory, and write them in the other formats.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="TUM output needs stamps: taken from TUM input, bag/TUM image names\n"
        "(e.g. 1311868169.163498.png) or --rate (index / rate).",
    )
    ex.add_argument(
        "input",
        metavar="INPUT",
        type=Path,
        help=".nremap, COLMAP model folder, pose list or TUM trajectory",
    )
    ex.add_argument(
        "--tum", type=Path, metavar="OUT", help="write a TUM trajectory (camera->world, xyzw)"
    )
    ex.add_argument(
        "--hloc",
        type=Path,
        metavar="OUT",
        help="write a pose list 'NAME qw qx qy qz tx ty tz' (world->camera)",
    )
    ex.add_argument(
        "--colmap", type=Path, metavar="DIR", help="write a COLMAP text model (maps: with points3D)"
    )
    ex.add_argument(
        "--colmap-binary", action="store_true", help="with --colmap: binary files instead of text"
    )
    ex.add_argument(
        "--rate", type=float, metavar="HZ", help="stamps = index / HZ when names carry none"
    )
    ex.add_argument(
        "--format",
        choices=("auto", "hloc", "tum"),
        default="auto",
        help="format of a pose-list INPUT",
    )
    return p


# ---------------------------------------------------------------------------------------------
def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def _load_model(weights: Path | None, device: str):  # noqa: ANN202
    from nre_localization.localizer import resolve_device
    from nre_localization.model.network import load_default_model, load_model

    dev = resolve_device(device)
    return (load_model(weights, dev) if weights else load_default_model(dev)), dev


def cmd_build_map(args: argparse.Namespace) -> int:
    from nre_localization.maps.builder import BuildConfig, build_map, load_scene, pick_device
    from nre_localization.maps.format import save_map
    from nre_localization.maps.triangulation import TriangulationConfig

    t0 = time.perf_counter()
    scene = load_scene(
        args.source,
        images=args.images,
        exclude=args.exclude,
        camera=args.camera,
        max_dt=args.max_dt,
        split=args.split,
        image_topic=args.image_topic,
        camera_info_topic=args.camera_info_topic,
        pose_topic=args.pose_topic,
        world_frame=args.world_frame,
        camera_frame=args.camera_frame,
        every=args.every,
    )
    model = None
    if not args.no_descriptors:
        model, _ = _load_model(args.weights, args.device)
    match_device = pick_device(args.device) if model is not None else "cpu"
    cfg = BuildConfig(
        triangulation=TriangulationConfig(
            max_features=args.max_features, neighbours=args.neighbours, device=match_device
        ),
        device=args.device,
        max_image_width=args.max_image_width,
    )
    m, stats = build_map(scene, model, cfg, progress=_progress(args))
    save_map(m, args.out)
    ipm = (
        f", {stats.images_per_minute:.0f} images/min on {stats.device}"
        if stats.images_per_minute
        else ""
    )
    print(
        f"{args.out}: {stats.n_images} keyframes, {stats.n_points} points ({stats.points_from}), "
        f"{stats.n_observations} observations, {time.perf_counter() - t0:.1f} s{ipm}"
    )
    return 0


def _atomic_text(path: Path, text: str) -> None:
    path = Path(path)
    if str(path.parent) not in ("", "."):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def cmd_localize(args: argparse.Namespace) -> int:
    from nre_localization.datasets.colmap import read_queries_with_intrinsics
    from nre_localization.datasets.common import ENGINE_MODELS, read_rgb, undistort_to_pinhole
    from nre_localization.datasets.poses import qt_from_pose
    from nre_localization.evaluation.metrics import latency_stats
    from nre_localization.localizer import Localizer, LocalizerConfig
    from nre_localization.maps.format import load_map

    queries = read_queries_with_intrinsics(args.queries)
    if not queries:
        raise InputError(f"{args.queries}: no queries")
    # Check every query image before any heavy work.
    for name, _ in queries:
        path = args.images / name
        if not path.is_file():
            raise InputError(f"{path}: query image not found")
    model, dev = _load_model(args.weights, args.device)
    nre_map = load_map(args.map, expected_fingerprint=model.fingerprint(), require_descriptors=True)
    cfg = LocalizerConfig(
        retrieval_top_k=args.top_k,
        max_map_points=args.max_points,
        max_image_width=args.max_image_width,
    )
    loc = Localizer(nre_map, model, cfg, dev)
    lines, declined, per_query = [], [], []
    it = queries
    if _progress(args):
        from tqdm import tqdm

        it = tqdm(queries, desc="localize", unit="img")
    for k, (name, cam) in enumerate(it):
        img = read_rgb(args.images / name, cam)
        if cam.model not in ENGINE_MODELS:
            img, cam = undistort_to_pinhole(img, cam)
        loc.reset()
        res = loc.process(img, cam, float(k))
        per_query.append(
            {"name": name, "reliable": res.reliable, "reason": res.reason, "timings": res.timings}
        )
        if res.reliable and res.T_cam_world is not None:
            q, t = qt_from_pose(res.T_cam_world)
            lines.append(name + " " + " ".join(f"{v:.10f}" for v in (*q, *t)))
        else:
            declined.append(f"{name}  # {res.reason}" if res.reason else name)
    _atomic_text(args.out, "".join(s + "\n" for s in lines))
    _atomic_text(Path(str(args.out) + ".declined"), "".join(s + "\n" for s in declined))
    if args.timings:
        totals = [float(q["timings"].get("total", 0.0)) for q in per_query]  # type: ignore[attr-defined]
        _atomic_text(
            args.timings,
            json.dumps(
                {"device": str(dev), "latency": latency_stats(totals), "per_query": per_query},
                indent=2,
            )
            + "\n",
        )
    print(f"{args.out}: {len(lines)} localised, {len(declined)} declined of {len(queries)} queries")
    return 0


def _limit_width(img: np.ndarray, cam, max_width: int):  # noqa: ANN001, ANN202
    """Resize ``img`` (and its CameraSpec) to at most ``max_width`` px wide (0: never)."""
    import cv2

    h, w = img.shape[:2]
    if not max_width or w <= max_width:
        return img, cam
    nh = max(1, round(h * max_width / w))
    return cv2.resize(img, (max_width, nh), interpolation=cv2.INTER_AREA), cam.scaled(max_width, nh)


def _parse_camera(text: str, what: str):  # noqa: ANN202
    from nre_localization.datasets.common import CameraSpec

    el = text.split()
    try:
        return CameraSpec.from_colmap(el[0], int(el[1]), int(el[2]), [float(v) for v in el[3:]])
    except (ValueError, IndexError):
        raise InputError(f"{what}: expected 'MODEL WIDTH HEIGHT PARAMS...', got {text!r}") from None
    except InputError as e:
        raise InputError(f"{what}: {e}") from None


def cmd_localize_pair(args: argparse.Namespace) -> int:
    import torch

    from nre_localization.datasets.common import ENGINE_MODELS, read_rgb, undistort_to_pinhole
    from nre_localization.datasets.poses import pose_from_qt, qt_from_pose
    from nre_localization.engine.solver import MapPoints, QueryFeatures, SolverConfig, solve
    from nre_localization.localizer import LocalizerConfig
    from nre_localization.maps.builder import image_to_tensor, sample_descriptors

    qcam = _parse_camera(args.query_camera, "--query-camera")
    rcam = _parse_camera(args.reference_camera, "--reference-camera")
    try:
        v = np.array([float(x) for x in args.reference_pose.split()])
        assert v.shape == (7,) and np.isfinite(v).all()
    except (ValueError, AssertionError):
        raise InputError(
            f"--reference-pose: expected 'qw qx qy qz tx ty tz', got {args.reference_pose!r}"
        ) from None
    T_ref = pose_from_qt(v[:4] / np.linalg.norm(v[:4]), v[4:])
    pts_path = Path(args.points)
    if not pts_path.is_file():
        raise InputError(f"{pts_path}: points file not found")
    try:
        xyz = np.load(pts_path) if pts_path.suffix == ".npy" else np.loadtxt(pts_path, ndmin=2)
    except ValueError as e:
        raise InputError(f"{pts_path}: malformed points file ({str(e).splitlines()[0]})") from None
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise InputError(f"{pts_path}: expected rows 'X Y Z', got shape {xyz.shape}")
    xyz = xyz[:, :3].astype(np.float64)
    qimg = read_rgb(args.query, qcam)
    rimg = read_rgb(args.reference, rcam)
    qimg, qcam = _limit_width(qimg, qcam, args.max_image_width)
    rimg, rcam = _limit_width(rimg, rcam, args.max_image_width)
    if qcam.model not in ENGINE_MODELS:  # the engine projects PINHOLE/OPENCV/FISHEYE models
        qimg, qcam = undistort_to_pinhole(qimg, qcam)
    Xc = xyz @ T_ref[:3, :3].T + T_ref[:3, 3]
    uv, front = rcam.project(Xc)
    inside = (
        front
        & (uv[:, 0] >= 0)
        & (uv[:, 1] >= 0)
        & (uv[:, 0] <= rcam.width - 1)
        & (uv[:, 1] <= rcam.height - 1)
    )
    if inside.sum() < 4:
        raise InputError(
            f"{pts_path}: only {int(inside.sum())} points project into the reference image"
        )
    model, dev = _load_model(args.weights, args.device)
    with torch.inference_mode():
        fr = model(image_to_tensor(rimg, dev))
        fq = model(image_to_tensor(qimg, dev))
        dc = sample_descriptors(fr["coarse"][0], uv[inside], model.coarse_stride)
        df = sample_descriptors(fr["fine"][0], uv[inside], model.fine_stride)
    points = MapPoints(
        xyz=torch.as_tensor(xyz[inside], dtype=torch.float64, device=dev),
        desc_coarse=dc,
        desc_fine=df,
    )
    query = QueryFeatures(
        coarse=fq["coarse"][0],
        fine=fq["fine"][0],
        coarse_stride=int(model.coarse_stride),
        fine_stride=int(model.fine_stride),
    )
    # A global solve, with the Localizer's ambiguity check (4 MSAC seeds must agree).
    cfg = SolverConfig(consensus_seeds=LocalizerConfig().global_consensus_seeds)
    res = solve(query, points, qcam.to_engine(), None, cfg)
    T = np.asarray(res.T_cam_world.detach().cpu().numpy(), dtype=np.float64)
    if not bool(res.reliable):
        why = "; ".join(res.reasons) or "unreliable solve"
        print(
            f"{PROG}: query declined ({why}; {int(res.n_informative)} informative points)",
            file=sys.stderr,
        )
        return 3
    q, t = qt_from_pose(T)
    line = " ".join(f"{x:.10f}" for x in (*q, *t))
    if args.out:
        _atomic_text(args.out, line + "\n")
    else:
        print(line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nre_localization.datasets.poses import camera_center
    from nre_localization.evaluation import plots, report

    summary, rows, pred, gt = report.evaluate_files(
        args.pred, args.gt, args.declined, args.queries, args.pred_format, args.max_dt
    )
    report.write_json(args.json, summary, rows)
    if args.csv:
        report.write_csv(args.csv, rows)
    if args.plots:
        t = np.array([q.t_err for q in rows])
        r = np.array([q.r_err for q in rows])
        plots.plot_error_cdf({args.label: (t, r)}, args.plots / "error_cdf.png")
        plots.plot_per_query(rows, args.plots / "per_query.png")
        names = [q.name for q in rows]
        cg = np.stack([camera_center(gt[n]) for n in names]) if names else np.zeros((0, 3))
        cp = (
            np.stack([camera_center(pred[n]) if n in pred else np.full(3, np.nan) for n in names])
            if names
            else None
        )
        seq = summary.get("ground_truth_kind") == "tum"
        plots.plot_trajectory(cg, cp, args.plots / "trajectory.png", sequence=seq)
    rec = summary["recall"]
    mt, mr = summary["median_translation_m"], summary["median_rotation_deg"]
    med = (
        f"median {mt:.3f} m / {mr:.2f} deg"
        if mt is not None and mr is not None
        else "median: failed"
    )
    print(
        f"{summary['n_queries']} queries, {summary['n_declined']} declined; {med}; recall "
        + ", ".join(f"{k} {v:.3f}" for k, v in rec.items())
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nre_localization.datasets import colmap, tum
    from nre_localization.datasets.common import PosedImage, Scene
    from nre_localization.datasets.poses import invert_pose
    from nre_localization.evaluation.report import detect_pred_format, stamp_from_name

    if not (args.tum or args.hloc or args.colmap):
        raise InputError("nothing to write: give --tum, --hloc and/or --colmap")
    src = Path(args.input)
    stamps: list[float] | None = None
    scene: Scene | None = None
    if src.is_file() and src.suffix == ".nremap":
        from nre_localization.maps.format import load_map

        m = load_map(src)
        names = list(m.keyframe_names)
        poses = {n: m.keyframe_T_cam_world[i] for i, n in enumerate(names)}
        images = [
            PosedImage(n, int(m.keyframe_camera_ids[i]), m.keyframe_T_cam_world[i])
            for i, n in enumerate(names)
        ]
        scene = Scene(cameras=dict(m.cameras), images=images, points=m.points)
    elif src.is_dir():
        model = colmap.read_model(src)
        scene = colmap.model_to_scene(model, None)
        poses = {im.name: im.T_cam_world for im in scene.images}
    else:
        fmt = detect_pred_format(src) if args.format == "auto" else args.format
        if fmt == "tum":
            traj = tum.read_trajectory(src)
            stamps = traj.stamps.tolist()
            T_cw = invert_pose(traj.T_world_cam)
            poses = {f"{s:.6f}": T for s, T in zip(traj.stamps, T_cw, strict=True)}
        else:
            poses = colmap.read_pose_list(src)
    names = list(poses)
    if args.hloc:
        colmap.write_pose_list(args.hloc, poses)
    if args.tum:
        if stamps is None:
            if args.rate:
                stamps = [i / args.rate for i in range(len(names))]
            else:
                try:
                    stamps = [stamp_from_name(n) for n in names]
                except InputError as e:
                    raise InputError(f"{src}: {e}; give --rate HZ for index-based stamps") from None
        order = np.argsort(stamps, kind="stable")
        T_wc = invert_pose(np.stack([poses[names[i]] for i in order]))
        tum.write_trajectory(args.tum, np.asarray(stamps)[order], T_wc)
    if args.colmap:
        if scene is None:
            raise InputError(f"{src}: --colmap needs a map or a COLMAP model as INPUT")
        colmap.write_model(
            colmap.scene_to_model(scene), args.colmap, ".bin" if args.colmap_binary else ".txt"
        )
    outs = [str(p) for p in (args.hloc, args.tum, args.colmap) if p]
    print(f"{len(names)} poses -> {', '.join(outs)}")
    return 0


COMMANDS = {
    "build-map": cmd_build_map,
    "localize": cmd_localize,
    "localize-pair": cmd_localize_pair,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nre-localization`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        import cv2
        import torch

        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    try:
        return COMMANDS[args.command](args)
    except NreError as e:
        msg = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable output, full disk: still one line, not a traceback
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
