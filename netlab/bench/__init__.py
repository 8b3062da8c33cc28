"""`netlab bench`: its lab, the contenders, statistics and the report."""
