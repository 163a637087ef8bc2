def find_appointment(pet_name: str) -> dict:
    """Finds a pet's next appointment.

    Args:
        pet_name: The pet's name, e.g. Max.
    """
    day = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"][len(pet_name) % 5]
    context.state["pet_name"] = pet_name  # later tools, callbacks and instructions see it
    vet = tools.vet_on_call({"day": day})  # another tool of this app, run by the platform
    return {"pet_name": pet_name, "day": day, "time": f"{9 + len(pet_name) % 8}:30", "vet": vet["vet"]}
