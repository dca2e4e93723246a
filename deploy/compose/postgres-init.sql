-- Each service's own database, as on the local stack (deploy/stack.sh); the workers migrate them.
CREATE DATABASE license_orders;
CREATE DATABASE usage_metering;
CREATE DATABASE cycle_close;
CREATE DATABASE alert_board;
