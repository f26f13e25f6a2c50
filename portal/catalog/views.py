"""Staff pages for labs uploaded as zips: upload, see the self-check, publish. Thin: validate,
call one service, render."""

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from labs.archive import MAX_ARCHIVE_BYTES
from portal.access import can_manage_labs
from portal.catalog.models import LabUpload
from portal.catalog.uploads import (
    LabUploadError,
    lab_upload_create,
    lab_upload_dispatch_self_check,
    lab_upload_publish,
)


class LabZipForm(forms.Form):
    archive = forms.FileField(label="Lab zip", help_text="One lab folder, zipped (see docs/authoring-labs.md).")

    def clean_archive(self):
        upload = self.cleaned_data["archive"]
        if upload.size > MAX_ARCHIVE_BYTES:
            raise forms.ValidationError(
                f"The zip is {upload.size / 2**20:.1f} MiB; a lab may be at most {MAX_ARCHIVE_BYTES >> 20} MiB."
            )
        return upload


def _require_lab_manager(request) -> None:
    if not can_manage_labs(user=request.user):
        raise Http404("Only instructors can manage labs.")


@login_required
def lab_uploads(request):
    _require_lab_manager(request)
    form = LabZipForm()
    if request.method == "POST":
        form = LabZipForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                upload = lab_upload_create(user=request.user, data=form.cleaned_data["archive"].read())
            except LabUploadError as exc:
                form.add_error("archive", f"The lab was not uploaded: {exc}")
            else:
                messages.success(request, f"{upload.slug} v{upload.version} uploaded; a worker is checking it.")
                return redirect("catalog:upload", upload.pk)
    uploads = LabUpload.objects.select_related("uploaded_by").defer("archive")[:100]
    return render(request, "catalog/uploads.html", {"form": form, "uploads": uploads})


@login_required
def lab_upload_detail(request, upload_id: int):
    _require_lab_manager(request)
    upload = get_object_or_404(LabUpload.objects.defer("archive"), pk=upload_id)
    return render(request, "catalog/upload.html", {"upload": upload, "report": upload.report or {}})


@login_required
@require_POST
def lab_upload_action(request, upload_id: int, action: str):
    _require_lab_manager(request)
    upload = get_object_or_404(LabUpload, pk=upload_id)
    if action == "publish":
        try:
            lab = lab_upload_publish(upload=upload)
        except LabUploadError as exc:
            messages.error(request, f"Not published: {exc}")
        else:
            messages.success(
                request,
                f"{lab.slug} v{lab.version} is published: assign it from a course's Assignments page.",
            )
    elif action == "check":
        if lab_upload_dispatch_self_check(upload_id=upload.pk):
            messages.success(request, "Sent to a worker to be checked again.")
        else:
            messages.error(request, "The job queue is unreachable; try again shortly.")
    else:
        raise Http404("unknown action")
    return redirect("catalog:upload", upload.pk)
