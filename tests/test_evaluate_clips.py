"""`custom-convert evaluate-clips` agrees with `classify` clip by clip and writes its report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from custom.convert.cli import main as convert
from custom.convert.evaluate.metrics import average_precision, best_f1_threshold, confusion_matrix
from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.bundle import load_bundle
from custom.daemon.model.inference import Model

CLIPS = [
    "siren/us8k_102871-8-0-8.flac",
    "siren/us8k_121528-8-1-0.flac",
    "dog/us8k_125523-3-0-11.flac",
    "bird/esc50_1-38560-A-14.flac",
    "horn/us8k_145577-1-0-1.flac",
]


def test_report_matches_the_live_code_path(yamnet_bundle: Path, shared: Path, tmp_path: Path):
    source = shared / "data/clips/manifest.csv"
    with open(source, newline="") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    clips = [c for c in CLIPS if c in rows]
    assert len(clips) >= 4
    manifest = tmp_path / "clips" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(next(iter(rows.values())).keys()))
        writer.writeheader()
        for clip in clips:
            (manifest.parent / clip).parent.mkdir(exist_ok=True)
            (manifest.parent / clip).symlink_to(shared / "data/clips" / clip)
            writer.writerow(rows[clip])
    report_dir = tmp_path / "report"
    assert convert(["evaluate-clips", "--bundle", str(yamnet_bundle), "--manifest", str(manifest),
                    "--report", str(report_dir)]) == 0  # fmt: skip
    report = json.loads((report_dir / "clips_report.json").read_text())
    assert (report_dir / "confusion_clips.png").stat().st_size > 1000

    model = Model(load_bundle(yamnet_bundle))
    names = list(model.bundle.class_names)
    label_to_name = {"siren": "Siren", "dog": "Dog", "bird": "Bird", "horn": "Vehicle horn"}
    right = 0
    for clip in clips:
        top = names[int(model.scores(read_audio(shared / "data/clips" / clip).waveform[:160000]).scores.argmax())]
        right += top == label_to_name[rows[clip]["label"]]
    assert report["clips"] == len(clips)
    assert report["top1"] == round(right / len(clips), 4)
    assert sum(map(sum, report["confusion"]["matrix"])) == len(clips)


def test_metrics_against_hand_computation():
    # scores 0.9(+) 0.8(-) 0.7(+) 0.1(-): precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert abs(average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) - (1 + 2 / 3) / 2) < 1e-12
    assert abs(average_precision([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) - 0.5) < 1e-12  # ties: no lucky order
    assert confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2], 3).tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    # F1 is best when cutting between 0.6 and 0.4: both positives in, the negative out
    assert abs(best_f1_threshold([1, 1, 0], [0.8, 0.6, 0.4]) - 0.5) < 1e-9
