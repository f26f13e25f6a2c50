from django.urls import path

from portal.catalog import views

app_name = "catalog"

urlpatterns = [
    path("staff/labs/", views.lab_uploads, name="uploads"),
    path("staff/labs/<int:upload_id>/", views.lab_upload_detail, name="upload"),
    path("staff/labs/<int:upload_id>/<slug:action>/", views.lab_upload_action, name="upload_action"),
]
