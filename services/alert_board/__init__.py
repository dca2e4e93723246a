"""Alert board: a read model of the cap alerts for the operations team, served as a live web page."""
