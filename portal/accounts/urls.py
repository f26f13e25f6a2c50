from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy


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
    path("login/", auth_views.LoginView.as_view(template_name="accounts/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("invitation/<uidb64>/<token>/", InvitationView.as_view(), name="invitation"),
]
