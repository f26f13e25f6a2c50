"""Labs uploaded as zips from the staff pages: a bad zip is refused with what to fix and leaves
nothing behind; a good one is checked on a worker (the real self-check, through the broker's
message) and only then can be published, after which it can be assigned."""

from __future__ import annotations

import base64
import html
import io
import json
import stat
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from gpu_runner.tasks import self_check_uploaded_lab
from labs import catalog
from labs.protocol import Task
from labs.scaffold import create_lab
from portal.catalog.models import Lab, LabUpload
from portal.catalog.uploads import LabUploadError, lab_upload_publish, lab_upload_record_self_check


def _zip(folder, *, prefix=None, extra=()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, f"{prefix or folder.name}/{path.relative_to(folder)}")
        for info, data in extra:
            archive.writestr(info, data)
    return buffer.getvalue()


@pytest.fixture
def scaffold(tmp_path):
    return create_lab("relu_lab", tmp_path, title="ReLU, uploaded")


def _post(client, data: bytes):
    return client.post(reverse("catalog:uploads"), {"archive": SimpleUploadedFile("lab.zip", data)})


def _edited(folder, name: str, old: str, new: str) -> bytes:
    path = folder / name
    path.write_text(path.read_text().replace(old, new))
    return _zip(folder)


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, str]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda s: b"not a zip at all", "this is not a readable zip file"),
        (lambda s: _zip(s, extra=[("../escape.py", "x")]), "must be relative and stay inside the lab folder"),
        (lambda s: _zip(s, extra=[_symlink("relu_lab/data.txt", "/etc/passwd")]), "is a symbolic link"),
        (lambda s: _zip(s, extra=[("other/lab.toml", "slug = 'other'")]), "exactly one lab"),
        (lambda s: _edited(s, "run.py", "def run(", "def runs("), "run.py: run()"),
        (
            lambda s: _edited(s, "grader.py", "def check(", "def run(case, output):\n    pass\n\n\ndef check("),
            "move it into run.py",
        ),
        (lambda s: _edited(s, "run.py", "def timed(", "def timer("), "a timed case needs both"),
        (lambda s: _edited(s, "lab.toml", "version = 1", 'version = "1"'), "'version' must be a int"),
        (lambda s: _zip(s, extra=[("relu_lab/big.bin", b"\0" * (5 << 20))]), "a lab may be at most 5 MiB"),
    ],
)
def test_a_bad_zip_is_refused_with_what_to_fix_and_nothing_is_kept(client, cast, scaffold, build, message):
    client.force_login(cast["ines"])
    response = _post(client, build(scaffold))
    assert response.status_code == 200
    assert message in html.unescape(response.content.decode())
    assert not LabUpload.objects.exists()


def test_only_instructors_reach_the_lab_pages(client, cast):
    client.force_login(cast["alice"])
    assert client.get(reverse("catalog:uploads")).status_code == 404
    client.force_login(cast["tariq"])  # a TA
    assert client.get(reverse("catalog:uploads")).status_code == 404
    client.force_login(cast["ines"])
    page = client.get(reverse("catalog:uploads"))
    assert page.status_code == 200 and 'href="/staff/labs/"' in page.content.decode()


def test_a_good_zip_is_checked_by_a_worker_then_published_and_assignable(
    client,
    cast,
    scaffold,
    private_broker,
    django_capture_on_commit_callbacks,  # noqa: F811
):
    client.force_login(cast["ines"])
    with django_capture_on_commit_callbacks(execute=True):
        response = _post(client, _zip(scaffold))
    upload = LabUpload.objects.get()
    assert response.status_code == 302 and (upload.slug, upload.version, upload.state) == ("relu_lab", 1, "checking")

    # Not publishable before its check passed.
    with pytest.raises(LabUploadError, match="only a lab whose check passed"):
        lab_upload_publish(upload=upload)

    # The check went to the cpu queue: run that very message as the worker does.
    envelope = json.loads(private_broker.client().lrange("cpu", 0, -1)[0])
    assert envelope["headers"]["task"] == Task.SELF_CHECK_LAB
    message = json.loads(base64.b64decode(envelope["body"]))[0][0]
    report = self_check_uploaded_lab(message)
    assert report["ok"], report
    assert {s["solution"]: s["verdict"] for s in report["solutions"]} == {
        "starter": "failed",
        "correct": "succeeded",
        "calls_torch_relu": "failed",
        "crashes": "failed",
        "hangs": "timed_out",
        "leaky": "failed",
        "skips_timed_work": "failed",
    }
    lab_upload_record_self_check(upload_id=upload.pk, report=report)
    page = client.get(reverse("catalog:upload", args=[upload.pk])).content.decode()
    assert "Check passed" in page and "calls_torch_relu" in page

    response = client.post(reverse("catalog:upload_action", args=[upload.pk, "publish"]))
    assert response.status_code == 302
    upload.refresh_from_db()
    assert upload.state == "published"
    assert (catalog.UPLOADED_LABS_ROOT / "relu_lab" / "grader.py").exists()
    lab = Lab.objects.get(slug="relu_lab")
    assert lab.is_available and lab.title == "ReLU, uploaded" and "relu" in lab.starter_files["relu_lab.py"]
    assert catalog.find_lab("relu_lab").path == catalog.UPLOADED_LABS_ROOT / "relu_lab"

    # The same version again is refused: results must say which version graded them.
    response = _post(client, _zip(scaffold))
    assert "already published at version 1; bump 'version'" in html.unescape(response.content.decode())


def test_a_failed_check_keeps_the_lab_unpublishable_and_says_why(cast, scaffold):
    from portal.catalog.uploads import lab_upload_create

    upload = lab_upload_create(user=cast["ines"], data=_zip(scaffold))
    report = {
        "ok": False,
        "problems": [],
        "solutions": [{"solution": "leaky", "ok": False, "problems": ["verdict succeeded, expected failed"]}],
    }
    lab_upload_record_self_check(upload_id=upload.pk, report=report)
    upload.refresh_from_db()
    assert upload.state == "failed" and "leaky: verdict succeeded, expected failed" in upload.message
    with pytest.raises(LabUploadError):
        lab_upload_publish(upload=upload)
    assert not (catalog.UPLOADED_LABS_ROOT / "relu_lab").exists()


def test_a_built_in_slug_cannot_be_taken(cast, tmp_path):
    folder = create_lab("custom_op", tmp_path)
    from portal.catalog.uploads import lab_upload_create

    with pytest.raises(LabUploadError, match="'custom_op' is a built-in lab"):
        lab_upload_create(user=cast["ines"], data=_zip(folder))
