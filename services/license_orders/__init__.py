"""License orders: buy (prorated), preview, scheduled removal, restore and seat enforcement."""
