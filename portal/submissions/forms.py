from django import forms

from portal.courses.models import Assignment
from portal.submissions.services import SubmissionRefused, check_submission_files


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(d, initial) for d in data if d]
        return [super().clean(data, initial)] if data else []


class SubmitForm(forms.Form):
    """Upload the lab's files, or paste the entry file; validated by the submissions service."""

    files = MultipleFileField(required=False, label="Upload files")
    code = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false"}),
        label="...or paste your code",
    )

    def __init__(self, *args, assignment: Assignment, **kwargs):
        super().__init__(*args, **kwargs)
        self.assignment = assignment
        self.decoded: dict[str, str] = {}
        self.source = "upload"
        self.fields["code"].label = f"...or paste {assignment.lab.entry}"

    def clean(self):
        cleaned = super().clean()
        uploads = cleaned.get("files") or []
        code = cleaned.get("code") or ""
        limit = self.assignment.lab.max_file_bytes
        raw: dict[str, bytes] = {}
        for upload in uploads:
            if upload.size > limit:
                raise forms.ValidationError(
                    f"{upload.name} is {upload.size:,} bytes; the limit is {limit:,} bytes. "
                    "Submit source code only (no data or model weights)."
                )
            raw[upload.name] = upload.read()
        if code.strip() and not uploads:
            raw[self.assignment.lab.entry] = code.replace("\r\n", "\n").encode()
            self.source = "paste"
        elif code.strip() and uploads:
            raise forms.ValidationError("Either upload files or paste code, not both.")
        try:
            self.decoded = check_submission_files(assignment=self.assignment, files=raw)
        except SubmissionRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        return cleaned
