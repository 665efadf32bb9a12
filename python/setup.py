"""The wheel carries libshoal.so (built by Tools/python.sh into shoal/): a platform wheel."""

from setuptools import setup
from setuptools.dist import Distribution


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True


try:
    from wheel.bdist_wheel import bdist_wheel

    class PlatformWheel(bdist_wheel):
        # Pure Python around a C library loaded with ctypes: any CPython 3 of this platform.
        def get_tag(self):
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    commands = {"bdist_wheel": PlatformWheel}
except ImportError:  # pragma: no cover
    commands = {}

setup(distclass=BinaryDistribution, cmdclass=commands)
