from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy


class LoginView(auth_views.LoginView):
    """Username and password, and a "Sign in with ..." button where single sign-on is configured
    (portal/accounts/oidc.py); admins and invited accounts keep their passwords."""

    template_name = "accounts/login.html"

    def get_context_data(self, **kwargs):
        return {
            **super().get_context_data(**kwargs),
            "sso_provider_name": settings.OIDC_ENABLED and settings.OIDC_PROVIDER_NAME,
        }


class InvitationView(auth_views.PasswordResetConfirmView):
    """An invitation's link (portal/accounts/invitations.py): set a password, then log in."""

    template_name = "accounts/invitation.html"
    success_url = reverse_lazy("accounts:login")

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(self.request, f"Password set. Log in as {form.user.username}.")
        return response


app_name = "accounts"
urlpatterns = [
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("invitation/<uidb64>/<token>/", InvitationView.as_view(), name="invitation"),
]
