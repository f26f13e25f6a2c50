from django.urls import path

from portal.lti import views

app_name = "lti"
urlpatterns = [
    path("lti/login/", views.login, name="login"),
    path("lti/launch/", views.launch, name="launch"),
    path("lti/jwks/", views.jwks, name="jwks"),
    path("lti/config/", views.config, name="config"),
    path("lti/contexts/<int:context_id>/", views.context_link, name="context"),
    path("lti/links/<int:link_id>/", views.resource_link, name="resource_link"),
    path("courses/<slug:course_slug>/staff/roster/lms-sync/", views.roster_sync, name="roster_sync"),
]
