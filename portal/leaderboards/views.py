from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from portal.courses.selectors import assignment_for_user
from portal.leaderboards.selectors import leaderboard_for_viewer


@login_required
def leaderboard(request, course_slug: str, assignment_slug: str):
    """An assignment's ranking, for whoever may see the assignment (live over a websocket)."""
    assignment = assignment_for_user(course_slug=course_slug, assignment_slug=assignment_slug, user=request.user)
    if assignment is None:
        raise Http404("No such assignment, or it is not open to you.")
    return render(
        request,
        "leaderboards/leaderboard.html",
        {
            "assignment": assignment,
            "course": assignment.course,
            "lab": assignment.lab,
            "board": leaderboard_for_viewer(assignment=assignment, user=request.user),
        },
    )
