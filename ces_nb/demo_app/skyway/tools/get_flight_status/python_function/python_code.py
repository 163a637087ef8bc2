def get_flight_status(flight_number: str) -> dict:
    """Looks up the live status of a SkyWay Air flight.

    Args:
        flight_number: The flight number, e.g. SW123.

    Returns:
        The flight's status, gate and departure time.
    """
    number = flight_number.strip().upper()
    if not number.startswith("SW") or not number[2:].isdigit():
        return {"error": f"{flight_number} is not a SkyWay flight number (they look like SW123)"}
    n = int(number[2:])
    statuses = ["on time", "on time", "delayed 25 minutes", "boarding", "on time"]
    return {
        "flight_number": number,
        "status": statuses[n % len(statuses)],
        "gate": f"{'ABC'[n % 3]}{n % 40 + 1}",
        "departure_time": f"{6 + n % 14:02d}:{(n * 7) % 60:02d}",
    }
