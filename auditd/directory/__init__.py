"""The HR directory: employees, roles and their grants, stores, regions, partners.

Loaded once into frozen, indexed types; asked "who was this employee at that moment"
by the enrich stage, and (next) by the least-privilege check through `EmployeeView`.
"""

from auditd.directory.load import load_directory
from auditd.directory.model import (
    ACTIVE, DEPARTED, NOT_YET_HIRED, SUSPENDED, Directory, Employee, EmployeeView, Grant,
    Partner, Region, Role, RoleAssignment, Store,
)
from auditd.directory.schedule import Schedule
from auditd.directory.watch import DirectoryWatcher, ReloadOutcome

__all__ = [
    "ACTIVE", "DEPARTED", "NOT_YET_HIRED", "SUSPENDED", "Directory", "DirectoryWatcher", "Employee",
    "EmployeeView", "Grant", "Partner", "Region", "ReloadOutcome", "Role", "RoleAssignment", "Schedule",
    "Store", "load_directory",
]
