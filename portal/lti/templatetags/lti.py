from django import template

register = template.Library()


@register.inclusion_tag("lti/roster_sync.html", takes_context=True)
def lti_roster_sync(context, course):
    """The roster page's "Sync roster from the LMS" button, where an LMS course is linked."""
    contexts = list(course.lti_contexts.select_related("platform"))
    return {"course": course, "contexts": contexts, "csrf_token": context.get("csrf_token")}
