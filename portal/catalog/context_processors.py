from portal.access import can_manage_labs


def lab_manager(request) -> dict:
    """Whether to show the staff 'Labs' page in the navigation."""
    user = getattr(request, "user", None)
    return {"can_manage_labs": bool(user is not None and can_manage_labs(user=user))}
