"""Performance: the memory planner and the bench that measures real runs against it."""
